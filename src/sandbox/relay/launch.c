/*
 * compilerd-relay --launch: how the daemon starts bwrap on the host.
 *
 *   relay --launch --parent PID [--cgroup PROCS]... [--rlimit RES:VALUE]... [--user UID:GID]
 *         [--data-fd FD:HEX]... -- PROGRAM [ARG]...
 *
 * What a forked child of the daemon used to do between fork and exec, done here instead, so that
 * the daemon can start this with posix_spawn (a vfork: no copy of the daemon's page tables, no
 * copy-on-write faults in the daemon afterwards, whatever the size of its cache). In order: join
 * each run cgroup (writing 0 to its cgroup.procs, so the whole run is accounted from here on),
 * mark every descriptor above stderr close-on-exec (a socket passed in by systemd must never reach
 * a sandbox), open each FD of --data-fd as a fresh memfd holding the bytes HEX spells, inherited
 * by PROGRAM (bwrap's seccomp filters: each spawn reads its own copy from offset 0, and the daemon
 * hands no descriptor of its own to anyone), lower the rlimits, offer itself first to the OOM killer, no new privileges, drop to
 * UID:GID with no supplementary groups, ask for SIGKILL when the daemon's spawning thread dies,
 * check that the daemon (PID) is still the parent, and exec PROGRAM.
 *
 * Any failure ends it with status 127 and one line on stderr, before PROGRAM runs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "launch.h"

#define MAX_LIST 16
#define MAX_DATA_FDS 4

static void fail(const char *what, const char *arg) {
    dprintf(2, "compilerd-relay --launch: %s %s: %s\n", what, arg ? arg : "", strerror(errno));
    _exit(127);
}

static void usage(const char *why) {
    dprintf(2, "compilerd-relay --launch: %s\n", why);
    _exit(127);
}

static void cloexec_above_stderr(void) {
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3U, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */) == 0)
        return;
#endif
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) < 0)
        fail("getrlimit", NULL);
    int max = lim.rlim_cur > 65536 ? 65536 : (int)lim.rlim_cur;
    for (int fd = 3; fd < max; fd++) {
        int flags = fcntl(fd, F_GETFD);
        if (flags >= 0 && !(flags & FD_CLOEXEC))
            fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    }
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Descriptor `target`, not close-on-exec, reading the bytes that `hex` spells from offset 0. */
static void open_data_fd(int target, const char *hex) {
    size_t len = strlen(hex);
    if (len % 2 != 0)
        usage("--data-fd wants an even number of hex digits");
    unsigned char *bytes = malloc(len / 2 + 1);
    if (!bytes)
        fail("cannot allocate for --data-fd", NULL);
    for (size_t i = 0; i < len / 2; i++) {
        int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            usage("--data-fd wants lowercase hex digits");
        bytes[i] = (unsigned char)(hi << 4 | lo);
    }
    int fd = memfd_create("compilerd-data", 0);
    if (fd < 0)
        fail("cannot create a memfd for --data-fd", NULL);
    for (size_t done = 0; done < len / 2;) {
        ssize_t n = write(fd, bytes + done, len / 2 - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail("cannot fill the memfd for --data-fd", NULL);
        done += (size_t)n;
    }
    free(bytes);
    if (lseek(fd, 0, SEEK_SET) != 0)
        fail("cannot rewind the memfd for --data-fd", NULL);
    /* dup2 leaves the new descriptor inheritable; the memfd was made without MFD_CLOEXEC for the
     * case where it already is `target`. */
    if (fd != target) {
        if (dup2(fd, target) < 0)
            fail("cannot place the memfd for --data-fd", NULL);
        close(fd);
    }
}

int launch_main(int argc, char **argv) {
    const char *cgroups[MAX_LIST];
    int ncgroups = 0;
    int resources[MAX_LIST];
    unsigned long long values[MAX_LIST];
    int nrlimits = 0;
    int drop = 0;
    unsigned uid = 0, gid = 0;
    int data_fds[MAX_DATA_FDS];
    const char *data_hex[MAX_DATA_FDS];
    int ndata = 0;
    long parent = -1;
    int i = 1;
    for (; i < argc && strcmp(argv[i], "--") != 0; i += 2) {
        if (i + 1 >= argc)
            usage("an option lacks its value");
        const char *opt = argv[i], *val = argv[i + 1];
        char end;
        if (strcmp(opt, "--cgroup") == 0 && ncgroups < MAX_LIST) {
            cgroups[ncgroups++] = val;
        } else if (strcmp(opt, "--rlimit") == 0 && nrlimits < MAX_LIST) {
            if (sscanf(val, "%d:%llu%c", &resources[nrlimits], &values[nrlimits], &end) != 2)
                usage("--rlimit wants RESOURCE:VALUE");
            nrlimits++;
        } else if (strcmp(opt, "--user") == 0) {
            if (sscanf(val, "%u:%u%c", &uid, &gid, &end) != 2)
                usage("--user wants UID:GID");
            drop = 1;
        } else if (strcmp(opt, "--data-fd") == 0 && ndata < MAX_DATA_FDS) {
            int n = 0;
            if (sscanf(val, "%d:%n", &data_fds[ndata], &n) != 1 || n == 0 || data_fds[ndata] <= 2)
                usage("--data-fd wants FD:HEX, FD above stderr");
            data_hex[ndata++] = val + n;
        } else if (strcmp(opt, "--parent") == 0) {
            if (sscanf(val, "%ld%c", &parent, &end) != 1)
                usage("--parent wants a pid");
        } else {
            usage("unknown option or too many of it");
        }
    }
    if (i + 1 >= argc || parent <= 0)
        usage("usage: --launch --parent PID [OPTION VALUE]... -- PROGRAM [ARG]...");
    char **program = argv + i + 1;

    for (int c = 0; c < ncgroups; c++) {
        int fd = open(cgroups[c], O_WRONLY | O_CLOEXEC);
        /* "0" is the writing process itself, in v1 and v2 alike. */
        if (fd < 0 || write(fd, "0", 1) != 1)
            fail("cannot join the run's cgroup", cgroups[c]);
        close(fd);
    }
    /* Before the rlimits: the fallback walk goes up to RLIMIT_NOFILE, which they lower. */
    cloexec_above_stderr();
    /* After it, which would mark them close-on-exec, and in order: a later one may take the
     * number an earlier memfd was made with, never the number it was placed at. */
    for (int d = 0; d < ndata; d++)
        open_data_fd(data_fds[d], data_hex[d]);
    for (int r = 0; r < nrlimits; r++) {
        struct rlimit lim = {.rlim_cur = values[r], .rlim_max = values[r]};
        if (setrlimit(resources[r], &lim) < 0)
            fail("cannot set an rlimit", NULL);
    }
    /* Under host memory pressure the kernel should pick a sandbox, never the daemon. */
    int adj = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (adj >= 0) {
        if (write(adj, "1000", 4) != 4) {
            /* Best effort, as a sandbox without it is still a sandbox. */
        }
        close(adj);
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        fail("cannot set no_new_privs", NULL);
    if (drop) {
        if (setgroups(0, NULL) < 0 || setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0)
            fail("cannot drop to the sandbox's user", NULL);
    }
    /* After the uid change, which clears it. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
        fail("cannot set the parent-death signal", NULL);
    if (getppid() != (pid_t)parent) {
        errno = ESRCH;
        fail("the daemon is gone", NULL);
    }
    execv(program[0], program);
    fail("cannot start", program[0]);
    return 127;
}
