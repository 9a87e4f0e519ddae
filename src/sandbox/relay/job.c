/*
 * compilerd-relay's job mode: with --stdin-header, the relay reads a header from its stdin before
 * it starts anything. The header is "CJOB" and a 4-byte big-endian kind:
 *
 *   0  legacy: run the relay's own COMMAND; the rest of stdin is the command's stdin (the program).
 *      An empty stdin (a probe, an idle container let go) counts as this with no program.
 *   1  job: one stage (see docs/design.md, "The run model"), then:
 *        u32 argc, argc x (u32 len, bytes)                the stage's command line (execvp)
 *        u32 nfiles, nfiles x (u32 len, path, u32 mode, u64 len, content)   written under /tmp
 *        u64 len, bytes                                   the stage's stdin (a memfd, then EOF);
 *                                                         all ones: the rest of the relay's
 *                                                         stdin, live (no bytes here)
 *        u32 cpu_ms, u32 wall_ms                          0: no limit
 *        u32 nkeep, nkeep x (u32 len, path)               files sent back after a clean exit
 *                                                         ("*": every regular file at the top)
 *        u64 keep_max                                     their total size at most
 *
 * Before the exit frame the relay sends an 'm' frame (u32 status, u32 signal, u32 limit (0 none,
 * 1 CPU, 2 wall), u64 cpu_us, u64 wall_us, u64 peak memory bytes (all ones: unknown)) and, after
 * an exit with status 0, one 'f' frame per kept file (u32 len, path, u32 mode, content).
 *
 * The relay stops a stage at its CPU or wall time: as pid 1 under bwrap it kills every process
 * (kill(-1)); under Docker (--user) it runs as a user of its own that cannot signal the program's,
 * so it reports the stage killed (SIGKILL, the limit) and the daemon removes the container.
 *
 * CPU time is that of every process of the stage: the relay reaps them all (it is pid 1 under
 * bwrap, a child subreaper under Docker), so its children's rusage holds the finished ones and
 * /proc the running ones. Peak memory is the sandbox cgroup's own high-water mark where the
 * sandbox can see its cgroup (Docker); elsewhere the daemon reads it from outside (bwrap).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "job.h"

/* No single field of a header may be larger: the daemon bounds them far below this. */
#define FIELD_MAX (512u << 20)
#define COUNT_MAX 4096u
#define WORKDIR "/tmp"
#define CHECK_MS 10

enum limit { LIMIT_NONE = 0, LIMIT_CPU = 1, LIMIT_WALL = 2 };

struct file {
    char *path;
    uint32_t mode;
    uint64_t len;
    char *data;
};

struct job {
    char **argv;
    uint32_t nfiles;
    struct file *files;
    uint64_t stdin_len;
    char *stdin_data;
    int live_stdin;
    uint32_t cpu_ms, wall_ms;
    uint32_t nkeep;
    char **keep;
    uint64_t keep_max;
    int drop;
    long long cpu_base_us;
    long long started_us, ended_us;
    enum limit hit;
    int killed;
};

static void bad(const char *what) {
    dprintf(2, "compilerd-relay: malformed job header: %s\n", what);
    _exit(125);
}

/* Reads exactly `n` bytes; 0 at a clean end before the first byte, else exits. */
static int read_exact(int fd, void *buf, size_t n, int eof_ok) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            bad(strerror(errno));
        if (r == 0) {
            if (got == 0 && eof_ok)
                return 0;
            bad("truncated");
        }
        got += (size_t)r;
    }
    return 1;
}

static uint32_t u32(int fd) {
    unsigned char b[4];
    read_exact(fd, b, 4, 0);
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static uint64_t u64(int fd) {
    uint64_t hi = u32(fd);
    return hi << 32 | u32(fd);
}

static char *bytes(int fd, uint64_t len, int nul) {
    if (len > FIELD_MAX)
        bad("field too large");
    char *p = malloc(len + 1);
    if (!p)
        bad("out of memory");
    if (len)
        read_exact(fd, p, len, 0);
    p[len] = 0;
    if (nul && memchr(p, 0, len))
        bad("NUL in a string");
    return p;
}

static uint32_t count(int fd) {
    uint32_t n = u32(fd);
    if (n > COUNT_MAX)
        bad("too many entries");
    return n;
}

struct job *job_read(int drop) {
    unsigned char head[8];
    if (!read_exact(0, head, sizeof head, 1))
        return NULL;
    if (memcmp(head, "CJOB", 4) != 0)
        bad("no CJOB magic");
    uint32_t kind = (uint32_t)head[4] << 24 | (uint32_t)head[5] << 16 | (uint32_t)head[6] << 8 |
                    head[7];
    if (kind == 0)
        return NULL;
    if (kind != 1)
        bad("unknown kind");
    struct job *j = calloc(1, sizeof *j);
    if (!j)
        bad("out of memory");
    uint32_t argc = count(0);
    if (argc == 0)
        bad("no command");
    j->argv = calloc(argc + 1, sizeof *j->argv);
    for (uint32_t i = 0; i < argc; i++)
        j->argv[i] = bytes(0, u32(0), 1);
    j->nfiles = count(0);
    j->files = calloc(j->nfiles + 1, sizeof *j->files);
    for (uint32_t i = 0; i < j->nfiles; i++) {
        j->files[i].path = bytes(0, u32(0), 1);
        j->files[i].mode = u32(0);
        j->files[i].len = u64(0);
        j->files[i].data = bytes(0, j->files[i].len, 0);
    }
    j->stdin_len = u64(0);
    j->live_stdin = j->stdin_len == UINT64_MAX;
    if (j->live_stdin)
        j->stdin_len = 0;
    j->stdin_data = bytes(0, j->stdin_len, 0);
    j->cpu_ms = u32(0);
    j->wall_ms = u32(0);
    j->nkeep = count(0);
    j->keep = calloc(j->nkeep + 1, sizeof *j->keep);
    for (uint32_t i = 0; i < j->nkeep; i++)
        j->keep[i] = bytes(0, u32(0), 1);
    j->keep_max = u64(0);
    j->drop = drop;
    /* Orphans of the stage come back to the relay, which reaps them and so counts their CPU. */
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    return j;
}

char **job_argv(struct job *job) { return job->argv; }

static long long now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

/* CPU of every process but this one: the finished (reaped by this relay) and the running. */
static long long cpu_us(void) {
    struct rusage ru;
    long long us = 0;
    if (getrusage(RUSAGE_CHILDREN, &ru) == 0)
        us += (long long)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 + ru.ru_utime.tv_usec +
              ru.ru_stime.tv_usec;
    long tick = sysconf(_SC_CLK_TCK);
    if (tick <= 0)
        tick = 100;
    DIR *d = opendir("/proc");
    if (!d)
        return us;
    pid_t self = getpid();
    long long ticks = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 0 || pid == self || pid == getppid())
            continue;
        char path[64], buf[1024];
        snprintf(path, sizeof path, "/proc/%ld/stat", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0)
            continue;
        buf[n] = 0;
        /* After the command's name, which may hold spaces and parentheses. */
        char *p = strrchr(buf, ')');
        if (!p)
            continue;
        unsigned long long ut, st;
        long long cut, cst;
        if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %lld %lld", &ut,
                   &st, &cut, &cst) == 4)
            ticks += (long long)(ut + st) + cut + cst;
    }
    closedir(d);
    return us + ticks * (1000000 / tick);
}

void job_before_fork(struct job *job) {
    job->cpu_base_us = cpu_us();
    job->started_us = now_us();
}

static int safe_path(const char *p) {
    if (!*p || *p == '/')
        return 0;
    for (const char *s = p; *s;) {
        const char *slash = strchr(s, '/');
        size_t n = slash ? (size_t)(slash - s) : strlen(s);
        if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
            return 0;
        s += n + (slash ? 1 : 0);
        if (slash && !*s)
            return 0;
    }
    return 1;
}

static void child_fail(const char *what, const char *arg) {
    dprintf(2, "compilerd: %s %s: %s\n", what, arg, strerror(errno));
    _exit(125);
}

static void write_file(const struct file *f) {
    if (!safe_path(f->path)) {
        errno = EINVAL;
        child_fail("cannot write file", f->path);
    }
    /* Parent directories first, each checked to be a real directory. */
    char *dir = strdup(f->path);
    for (char *s = strchr(dir, '/'); s; s = strchr(s + 1, '/')) {
        *s = 0;
        if (mkdir(dir, 0755) < 0 && errno != EEXIST)
            child_fail("cannot make directory", dir);
        *s = '/';
    }
    free(dir);
    int fd = open(f->path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC,
                  (f->mode & 0111) ? 0755 : 0644);
    if (fd < 0)
        child_fail("cannot write file", f->path);
    for (uint64_t done = 0; done < f->len;) {
        ssize_t n = write(fd, f->data + done, f->len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            child_fail("cannot write file", f->path);
        done += (uint64_t)n;
    }
    close(fd);
}

/* Stdin is all there from the start and then ends, as a file would. */
static void hold_stdin(struct job *job) {
    int in = memfd_create("stdin", MFD_CLOEXEC);
    if (in < 0) {
        char name[] = WORKDIR "/.stdin-XXXXXX";
        in = mkostemp(name, O_CLOEXEC);
        if (in < 0)
            child_fail("cannot hold stdin", "");
        unlink(name);
    }
    for (uint64_t done = 0; done < job->stdin_len;) {
        ssize_t n = write(in, job->stdin_data + done, job->stdin_len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            child_fail("cannot hold stdin", "");
        done += (uint64_t)n;
    }
    if (lseek(in, 0, SEEK_SET) < 0 || dup2(in, 0) < 0)
        child_fail("cannot hold stdin", "");
    close(in);
}

void job_enter(struct job *job) {
    if (chdir(WORKDIR) < 0)
        child_fail("cannot enter", WORKDIR);
    for (uint32_t i = 0; i < job->nfiles; i++)
        write_file(&job->files[i]);
    /* Live stdin: the relay's own, which the daemon keeps writing to and closes at the end. */
    if (!job->live_stdin)
        hold_stdin(job);
    if (job->cpu_ms) {
        /* A backstop per process; the relay's own check is the precise one. */
        rlim_t secs = job->cpu_ms / 1000 + 2;
        struct rlimit rl = {secs, secs + 1};
        setrlimit(RLIMIT_CPU, &rl);
    }
}

int job_poll_ms(struct job *job) {
    if (job->ended_us || job->killed)
        return -1;
    int ms = -1;
    if (job->wall_ms) {
        long long left = (long long)job->wall_ms - (now_us() - job->started_us) / 1000;
        ms = left > 0 ? (int)left : 0;
    }
    if (job->cpu_ms && (ms < 0 || ms > CHECK_MS))
        ms = CHECK_MS;
    return ms;
}

/* Kills every process of the stage where the relay can: as pid 1 (bwrap) kill(-1) reaches all the
 * others. 1: it cannot (see the top). */
static int kill_all(struct job *job, pid_t child) {
    job->killed = 1;
    if (job->drop)
        return 1;
    kill(getpid() == 1 ? -1 : child, SIGKILL);
    return 0;
}

int job_check(struct job *job, pid_t child) {
    if (job->ended_us || job->killed)
        return 0;
    if (job->wall_ms && now_us() - job->started_us >= (long long)job->wall_ms * 1000) {
        job->hit = LIMIT_WALL;
        return kill_all(job, child);
    }
    if (job->cpu_ms && cpu_us() - job->cpu_base_us >= (long long)job->cpu_ms * 1000) {
        job->hit = LIMIT_CPU;
        return kill_all(job, child);
    }
    return 0;
}

void job_reaped(struct job *job) { job->ended_us = now_us(); }

/* The sandbox cgroup's memory high-water mark, where the sandbox can see its cgroup. */
static uint64_t peak_memory(void) {
    static const char *const files[] = {"/sys/fs/cgroup/memory.peak",
                                        "/sys/fs/cgroup/memory/memory.max_usage_in_bytes"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        FILE *f = fopen(files[i], "re");
        if (!f)
            continue;
        unsigned long long v;
        int ok = fscanf(f, "%llu", &v) == 1;
        fclose(f);
        if (ok)
            return v;
    }
    return UINT64_MAX;
}

static void put32(unsigned char *p, uint32_t v) {
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

static void put64(unsigned char *p, uint64_t v) {
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

/* One kept file: sent when it is a regular file (never a link) that fits in what is left. */
static void send_file(int dir, const char *path, uint64_t *left, job_emit_fn emit) {
    if (!safe_path(path))
        return;
    int fd = openat(dir, path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return;
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > *left ||
        (uint64_t)st.st_size > FIELD_MAX) {
        close(fd);
        return;
    }
    size_t plen = strlen(path), size = (size_t)st.st_size;
    unsigned char *buf = malloc(4 + plen + 4 + size);
    if (!buf) {
        close(fd);
        return;
    }
    put32(buf, (uint32_t)plen);
    memcpy(buf + 4, path, plen);
    put32(buf + 4 + plen, (uint32_t)(st.st_mode & 0777));
    size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, buf + 8 + plen + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    if (got == size) {
        emit('f', buf, (uint32_t)(8 + plen + size));
        *left -= size;
    }
    free(buf);
}

/* The kept files; the entry "*" keeps every regular file at the top of the working directory
 * whose name does not start with a dot (stages whose outputs the program names, such as
 * Judge0's multi-file scripts). */
static void send_kept(struct job *job, job_emit_fn emit) {
    uint64_t left = job->keep_max;
    int dir = open(WORKDIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    for (uint32_t i = 0; dir >= 0 && i < job->nkeep; i++) {
        if (strcmp(job->keep[i], "*") != 0) {
            send_file(dir, job->keep[i], &left, emit);
            continue;
        }
        int all = dup(dir);
        DIR *d = all >= 0 ? fdopendir(all) : NULL;
        if (!d) {
            if (all >= 0)
                close(all);
            continue;
        }
        for (struct dirent *e; (e = readdir(d));)
            if (e->d_name[0] != '.')
                send_file(dir, e->d_name, &left, emit);
        closedir(d);
    }
    if (dir >= 0)
        close(dir);
}

void job_report(struct job *job, int status, int signalled, job_emit_fn emit) {
    if (!job->ended_us)
        job->ended_us = now_us();
    long long cpu = cpu_us() - job->cpu_base_us;
    unsigned char m[36];
    put32(m, (uint32_t)status);
    put32(m + 4, signalled ? (uint32_t)(status - 128) : 0);
    put32(m + 8, (uint32_t)job->hit);
    put64(m + 12, (uint64_t)(cpu > 0 ? cpu : 0));
    put64(m + 20, (uint64_t)(job->ended_us - job->started_us));
    put64(m + 28, peak_memory());
    emit('m', m, sizeof m);
    if (status == 0 && !signalled && job->hit == LIMIT_NONE)
        send_kept(job, emit);
}
