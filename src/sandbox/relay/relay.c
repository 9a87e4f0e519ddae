/*
 * compilerd's output relay: runs inside every sandbox as the parent of the program.
 *
 *   relay [--user UID:GID] [--stdin-header] COMMAND [ARG]...
 *   relay --launch ...   (on the host: how the daemon starts bwrap; see launch.c)
 *
 * With --user (Docker), the relay starts as root with only CAP_SETUID, CAP_SETGID and CAP_SETPCAP,
 * and the program runs as UID:GID with no supplementary groups and no capabilities at all (none
 * in any set, the bounding set included). Once the program is started, the relay itself becomes
 * RELAY_UID, another unprivileged user, with no capability either: it reads the program's bytes
 * with nothing to lose, and the program still cannot signal it (`kill -9 -1` reaches only its
 * own uid's processes) nor read anything of it through /proc. Without --user (bubblewrap, where
 * the relay is its namespace's pid 1, which nothing inside can kill, and started unprivileged)
 * the program runs as the relay's user.
 *
 * Also with --user, a relay whose command was killed by a signal stays up after its exit frame
 * until its stdin reaches its end (the daemon closes it when it is done with the container): the
 * relay of a pooled container's idle command is the container's main process, and a program run
 * in an exec beside it that kills that command (`kill -9 -1`) must not take the container, and
 * with it the program's own run, down. A command that exits by itself still ends the container
 * at once, so that one that cannot wait for a program is noticed.
 *
 * The program gets one SOCK_SEQPACKET socket as stdout and another as stderr. The kernel stamps
 * each write as it is queued, so writes keep their boundaries and their time; the relay always
 * forwards the pending write with the smallest stamp across both sockets (peeking both first), so
 * a later write never overtakes an earlier one. Where writes arrive unstamped (gVisor), stdout and
 * stderr are instead two datagram sockets sending to one queue (see `make_queue`). Each write leaves the relay on its own stdout as a
 * frame: one kind byte ('o' stdout, 'e' stderr, 'x' exit), a 4-byte big-endian length, the payload.
 * The exit frame's payload is the program's status (exit code, or 128+signal) and the number of
 * OOM kills the sandbox's memory cgroup counted during the run (0xffffffff: unknown), both 4-byte
 * big-endian. It is the last frame; a stream that ends without it did not end normally.
 *
 * The program can only write to its two sockets: the relay's stdout is not inherited, and the
 * relay makes itself non-dumpable so that a process of the same user can neither ptrace it nor
 * open its descriptors through /proc.
 *
 * With --stdin-header, a header on stdin first says whether COMMAND gets the rest of stdin or a
 * job (files, stdin, arguments, limits) runs instead; see job.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "job.h"
#include "launch.h"

/* Room for one write: the socket's send buffer bounds the largest write a program can make, so
 * it is raised as far as the host allows (net.core.wmem_max, or more with CAP_NET_ADMIN). */
#define SEND_BUFFER (64 << 20)
/* How long writes of processes the program left behind are still forwarded after it exited. */
#define LEFTOVER_GRACE_MS 50

static int out_fd = -1;

static void die(const char *what) {
    dprintf(2, "compilerd-relay: %s: %s\n", what, strerror(errno));
    _exit(125);
}

/* Writes all of `iov` to the daemon, or exits: a reader that is gone means the run is over. */
static void put_all(struct iovec *iov, int n) {
    while (n > 0) {
        ssize_t done = writev(out_fd, iov, n);
        if (done < 0) {
            if (errno == EINTR)
                continue;
            _exit(0);
        }
        while (n > 0 && (size_t)done >= iov->iov_len) {
            done -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + done;
            iov->iov_len -= (size_t)done;
        }
    }
}

static void frame(char kind, const void *data, uint32_t len) {
    unsigned char head[5] = {(unsigned char)kind, len >> 24, len >> 16, len >> 8, len};
    struct iovec iov[2] = {{head, sizeof head}, {(void *)data, len}};
    put_all(iov, 2);
}

/* The memory cgroup's OOM kill counter, or -1 where it cannot be read (no /sys, no cgroup). */
static long long oom_kills(void) {
    static const char *const files[] = {"/sys/fs/cgroup/memory.events",
                                        "/sys/fs/cgroup/memory/memory.oom_control"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        FILE *f = fopen(files[i], "re");
        if (!f)
            continue;
        char key[64];
        long long value;
        while (fscanf(f, "%63s %lld", key, &value) == 2) {
            if (strcmp(key, "oom_kill") == 0) {
                fclose(f);
                return value;
            }
        }
        fclose(f);
    }
    return -1;
}

struct stream {
    int fd; /* -1 once closed */
    char kind;
    int pending;
    size_t len;
    struct timespec at;
};

/* Looks at the next write queued on `s` without taking it: its length and kernel stamp. */
static void peek(struct stream *s) {
    s->pending = 0;
    if (s->fd < 0)
        return;
    char control[CMSG_SPACE(sizeof(struct timespec))];
    char byte;
    struct iovec iov = {&byte, 0};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                         .msg_controllen = sizeof control};
    ssize_t n = recvmsg(s->fd, &msg, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        die("reading the program's output");
    }
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (!c) {
        /* No stamp: this is the end of the stream, not a (possibly empty) write. */
        close(s->fd);
        s->fd = -1;
        return;
    }
    memcpy(&s->at, CMSG_DATA(c), sizeof s->at);
    s->len = (size_t)n;
    s->pending = 1;
}

static int earlier(const struct timespec *a, const struct timespec *b) {
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* Makes `*buf` hold at least `len` bytes. */
static void room(char **buf, size_t *cap, size_t len) {
    if (len <= *cap)
        return;
    free(*buf);
    *cap = len;
    *buf = malloc(*cap);
    if (!*buf)
        die("allocating");
}

/* Forwards every write queued now, oldest first; returns how many. */
static int drain(struct stream *st, char **buf, size_t *cap) {
    int moved = 0;
    for (;;) {
        peek(&st[0]);
        peek(&st[1]);
        /* Only one has a write: look at the other again. A write to it stamped before this one
         * was queued before this one was stamped, so it is visible now even if the first look,
         * made before the look that found this one, missed it. */
        if (st[0].pending != st[1].pending)
            peek(st[0].pending ? &st[1] : &st[0]);
        struct stream *s = NULL;
        if (st[0].pending && st[1].pending)
            s = earlier(&st[1].at, &st[0].at) ? &st[1] : &st[0];
        else if (st[0].pending)
            s = &st[0];
        else if (st[1].pending)
            s = &st[1];
        else
            return moved;
        room(buf, cap, s->len);
        ssize_t n = recv(s->fd, *buf, s->len ? s->len : 1, MSG_DONTWAIT);
        if (n < 0)
            die("reading the program's output");
        frame(s->kind, *buf, (uint32_t)n);
        moved++;
    }
}

/* Raises the send buffer of `fd` as far as allowed (see SEND_BUFFER). SO_SNDBUFFORCE needs
 * CAP_NET_ADMIN on Linux; gVisor accepts it without any effect, so the size is checked. */
static void big_send_buffer(int fd) {
    int size = SEND_BUFFER, got = 0;
    socklen_t len = sizeof got;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size) < 0 ||
        getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &got, &len) < 0 || got < size)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
}

static void pair(int sv[2]) {
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        die("socketpair");
    int one = 1;
    if (setsockopt(sv[0], SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one) < 0)
        die("SO_TIMESTAMPNS");
    big_send_buffer(sv[1]);
}

/* Whether the kernel stamps a write as it is queued. Linux does; gVisor (runsc) accepts
 * SO_TIMESTAMPNS but its writes arrive without a stamp, and without one two streams' writes cannot
 * be put back in order: then the relay uses the queue below instead. */
static int stamps_arrive(void) {
    int sv[2];
    pair(sv);
    char byte = 0;
    if (send(sv[1], &byte, 1, 0) != 1)
        die("probing the socket stamps");
    char control[CMSG_SPACE(sizeof(struct timespec))];
    struct iovec iov = {&byte, 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                         .msg_controllen = sizeof control};
    int stamped = recvmsg(sv[0], &msg, 0) == 1 && CMSG_FIRSTHDR(&msg) != NULL;
    close(sv[0]);
    close(sv[1]);
    return stamped;
}

/* The queue, where writes carry no stamp: one datagram socket receives the writes of both streams,
 * each stream a datagram socket of its own connected to it, so the kernel queues the writes of
 * both in the order they were made and says which socket sent each. Exact for writes made one
 * after another, as the stamps are. A datagram socket has no end of stream: the program's output is
 * over instead once none of its processes is left (see `program_left`). */
static int queue_fd = -1;
static struct sockaddr_un sender_name[2];
static socklen_t sender_len[2];

/* An abstract socket name, unique to this relay (the network namespace holds them). */
static socklen_t abstract_name(struct sockaddr_un *a, unsigned long long nonce, char tag) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    int n = snprintf(a->sun_path + 1, sizeof a->sun_path - 1, "compilerd-relay/%d/%016llx/%c",
                     (int)getpid(), nonce, tag);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

/* Makes the queue; returns the program's stdout and stderr in `fds`. */
static void make_queue(int fds[2]) {
    unsigned long long nonce;
    if (getrandom(&nonce, sizeof nonce, 0) != sizeof nonce)
        die("getrandom");
    struct sockaddr_un q;
    socklen_t qlen = abstract_name(&q, nonce, 'q');
    queue_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (queue_fd < 0 || bind(queue_fd, (struct sockaddr *)&q, qlen) < 0)
        die("making the output queue");
    for (int i = 0; i < 2; i++) {
        sender_len[i] = abstract_name(&sender_name[i], nonce, "oe"[i]);
        fds[i] = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fds[i] < 0 || bind(fds[i], (struct sockaddr *)&sender_name[i], sender_len[i]) < 0 ||
            connect(fds[i], (struct sockaddr *)&q, qlen) < 0)
            die("connecting a stream to the output queue");
        big_send_buffer(fds[i]);
    }
}

/* Forwards every write queued now, in queue order; datagrams from any other sender (the program
 * can find the queue's name) are dropped. */
static void drain_queue(char **buf, size_t *cap) {
    for (;;) {
        struct sockaddr_un from;
        char byte;
        struct iovec iov = {&byte, 0};
        struct msghdr msg = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov,
                             .msg_iovlen = 1};
        ssize_t n = recvmsg(queue_fd, &msg, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            die("reading the program's output");
        }
        room(buf, cap, (size_t)n);
        iov.iov_base = *buf;
        iov.iov_len = n ? (size_t)n : 1;
        msg.msg_namelen = sizeof from;
        n = recvmsg(queue_fd, &msg, MSG_DONTWAIT);
        if (n < 0)
            die("reading the program's output");
        for (int i = 0; i < 2; i++)
            if (msg.msg_namelen == sender_len[i] && memcmp(&from, &sender_name[i], sender_len[i]) == 0)
                frame("oe"[i], *buf, (uint32_t)n);
    }
}

/* The processes there were before the program (the engine's init, the relay, in a pooled
 * container the other relay and its command); -1 when there were too many to keep. */
static pid_t before[64];
static int n_before = 0;

/* Calls `each` for every process in /proc (this pid namespace's) but this one; stops when it
 * returns nonzero and returns that, or -1 when /proc cannot be read. */
static int each_process(int (*each)(pid_t)) {
    DIR *d = opendir("/proc");
    if (!d)
        return -1;
    int found = 0;
    struct dirent *entry;
    while (!found && (entry = readdir(d))) {
        char *end;
        long pid = strtol(entry->d_name, &end, 10);
        if (*end == 0 && pid > 0 && pid != getpid())
            found = each((pid_t)pid);
    }
    closedir(d);
    return found;
}

static int remember(pid_t pid) {
    if (n_before == (int)(sizeof before / sizeof *before))
        return 1;
    before[n_before++] = pid;
    return 0;
}

static int is_new(pid_t pid) {
    for (int i = 0; i < n_before; i++)
        if (before[i] == pid)
            return 0;
    return 1;
}

/* Whether a process the program started may still write (one that came after it, which neither
 * gVisor's kernel nor the relay's would let it hide). gVisor has no PR_SET_CHILD_SUBREAPER, so
 * the relay cannot count them as its children. Unknown counts as yes: the grace period ends it. */
static int program_left(void) {
    return n_before < 0 || each_process(is_new) != 0;
}

static long long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Written to by a child that refused to run the program; closed by its exec. */
static int refused_fd = -1;

/* In the child: says why on the relay's stderr, tells the relay, which then exits without an exit
 * frame (the run failed; it is not the program's answer), and exits. */
static void refuse(const char *what) {
    dprintf(2, "compilerd-relay: cannot run the program without privileges: %s: %s\n", what,
            strerror(errno));
    if (write(refused_fd, "!", 1) < 0) {
    }
    _exit(125);
}

/* The relay's own user once the program runs (with --user): not root, and not the program's user,
 * so that the program can neither signal it (`kill -9 -1`) nor ptrace it. */
#define RELAY_UID 65533
#define RELAY_GID 65533

/* Makes this process UID:GID for good, with no supplementary groups, no capability in any set
 * (the bounding set emptied first, while CAP_SETPCAP is still effective; leaving uid 0 clears the
 * permitted, effective and ambient sets; the inheritable one is cleared last) and no way to gain
 * privileges by exec. Returns NULL, or what failed (errno says why). */
static const char *become(uid_t uid, gid_t gid) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return "no_new_privs";
    for (int cap = 0; prctl(PR_CAPBSET_READ, cap) >= 0; cap++)
        if (prctl(PR_CAPBSET_DROP, cap) < 0)
            return "emptying the bounding set";
    if (setgroups(0, NULL) < 0)
        return "setgroups";
    if (setresgid(gid, gid, gid) < 0)
        return "setresgid";
    if (setresuid(uid, uid, uid) < 0)
        return "setresuid";
    struct __user_cap_header_struct head = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct caps[_LINUX_CAPABILITY_U32S_3];
    memset(caps, 0, sizeof caps);
    if (syscall(SYS_capset, &head, caps) < 0)
        return "capset";
    /* Already empty (it is a subset of the permitted set); cleared in case a kernel says so. */
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        return "clearing the ambient set";
    uid_t r, e, s;
    gid_t gr, ge, gs;
    int ok = getresuid(&r, &e, &s) == 0 && r == uid && e == uid && s == uid &&
             getresgid(&gr, &ge, &gs) == 0 && gr == gid && ge == gid && gs == gid &&
             (uid == 0 || setuid(0) < 0) && syscall(SYS_capget, &head, caps) == 0;
    for (int i = 0; ok && i < _LINUX_CAPABILITY_U32S_3; i++)
        ok = !caps[i].effective && !caps[i].permitted && !caps[i].inheritable;
    for (int cap = 0; ok && prctl(PR_CAPBSET_READ, cap) >= 0; cap++)
        ok = prctl(PR_CAPBSET_READ, cap) == 0;
    if (!ok) {
        errno = EPERM;
        return "the user did not stick";
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "--launch") == 0)
        return launch_main(argc - 1, argv + 1);
    int drop = 0;
    unsigned uid = 0, gid = 0;
    if (argc >= 3 && strcmp(argv[1], "--user") == 0) {
        char end;
        if (sscanf(argv[2], "%u:%u%c", &uid, &gid, &end) != 2) {
            dprintf(2, "compilerd-relay: --user wants UID:GID, not %s\n", argv[2]);
            return 125;
        }
        if (uid == RELAY_UID || uid == 0) {
            dprintf(2, "compilerd-relay: --user %u is root or the relay's own user\n", uid);
            return 125;
        }
        drop = 1;
        argc -= 2;
        argv += 2;
    }
    int header = 0;
    if (argc >= 2 && strcmp(argv[1], "--stdin-header") == 0) {
        header = 1;
        argc--;
        argv++;
    }
    if (argc < 2) {
        dprintf(2, "usage: compilerd-relay [--user UID:GID] [--stdin-header] COMMAND [ARG]...\n");
        return 125;
    }
    prctl(PR_SET_DUMPABLE, 0);
    out_fd = fcntl(1, F_DUPFD_CLOEXEC, 3);
    if (out_fd < 0)
        die("dup");
    /* Nothing but `out_fd` leads to the daemon, and it is not inherited. */
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0 && null != 1) {
        dup2(null, 1);
        close(null);
    }
    signal(SIGPIPE, SIG_IGN);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sigfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sigfd < 0)
        die("signalfd");
    /* Only watched for its end, never read: the program reads its stdin itself. */
    int in_fd = drop ? fcntl(0, F_DUPFD_CLOEXEC, 3) : -1;
    /* A pooled container's relay may wait here for long, beside another run: it waits as its
     * own user (effective only; the saved root is taken back to start the program). */
    if (drop && header && setresuid((uid_t)-1, RELAY_UID, (uid_t)-1) < 0)
        die("waiting as the relay's user");
    struct job *job = header ? job_read(drop) : NULL;
    if (drop && header && setresuid((uid_t)-1, 0, (uid_t)-1) < 0)
        die("taking root back to start the program");
    char **command = job ? job_argv(job) : argv + 1;
    long long oom_before = oom_kills();
    /* The program's stdout and stderr (o[1], e[1]), and what the relay reads them from. */
    int o[2], e[2];
    int queued = !stamps_arrive();
    if (queued) {
        int fds[2];
        make_queue(fds);
        o[0] = e[0] = -1;
        o[1] = fds[0];
        e[1] = fds[1];
        if (each_process(remember) != 0)
            n_before = -1;
    } else {
        pair(o);
        pair(e);
    }

    int refused[2] = {-1, -1};
    if (drop) {
        if (pipe2(refused, O_CLOEXEC) < 0)
            die("pipe");
        refused_fd = refused[1];
    }
    if (job)
        job_before_fork(job);
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        /* First, so that a failure is the relay's complaint (its stderr), not the program's. */
        if (drop) {
            const char *failed = become((uid_t)uid, (gid_t)gid);
            if (failed)
                refuse(failed);
        }
        sigprocmask(SIG_UNBLOCK, &chld, NULL);
        signal(SIGPIPE, SIG_DFL);
        if (dup2(o[1], 1) < 0 || dup2(e[1], 2) < 0)
            _exit(125);
        if (job)
            job_enter(job);
        execvp(command[0], command);
        dprintf(2, "%s: %s\n", command[0], strerror(errno));
        _exit(errno == ENOENT ? 127 : 126);
    }
    close(o[1]);
    close(e[1]);
    close(0);
    if (drop) {
        /* Ends at the child's exec (or its exit): a byte means it refused. */
        close(refused[1]);
        char byte;
        ssize_t n;
        while ((n = read(refused[0], &byte, 1)) < 0 && errno == EINTR) {
        }
        if (n == 1)
            _exit(125);
        close(refused[0]);
        /* The program runs: from here on the relay only reads what it writes, which needs no
         * privilege, so it keeps none (a flaw in that parsing then gives a program nothing). The
         * engine's init is the container's only root process left. Its own dumpable flag is set
         * again: a change of user resets it to the host's fs.suid_dumpable. */
        const char *failed = become(RELAY_UID, RELAY_GID);
        if (failed) {
            kill(child, SIGKILL);
            die(failed);
        }
        prctl(PR_SET_DUMPABLE, 0);
    }

    struct stream st[2] = {{.fd = o[0], .kind = 'o'}, {.fd = e[0], .kind = 'e'}};
    size_t cap = 1 << 16;
    char *buf = malloc(cap);
    if (!buf)
        die("allocating");
    int status = -1, signalled = 0;
    /* With the queue: no process of the program is left. */
    int all_gone = 0;
    long long exited_at = 0;
    for (;;) {
        if (queued)
            drain_queue(&buf, &cap);
        else
            drain(st, &buf, &cap);
        int ended = queued ? all_gone : st[0].fd < 0 && st[1].fd < 0;
        if (status >= 0 && (ended || now_ms() - exited_at >= LEFTOVER_GRACE_MS))
            break;
        struct pollfd p[3] = {{.fd = sigfd, .events = POLLIN},
                              {.fd = queued ? queue_fd : st[0].fd, .events = POLLIN},
                              {.fd = st[1].fd, .events = POLLIN}};
        int timeout = job && status < 0 ? job_poll_ms(job) : -1;
        if (status >= 0) {
            long long left = LEFTOVER_GRACE_MS - (now_ms() - exited_at);
            timeout = left > 0 ? (int)left : 0;
        }
        if (poll(p, 3, timeout) < 0 && errno != EINTR)
            die("poll");
        if (job && status < 0 && job_check(job, child)) {
            if (queued)
                drain_queue(&buf, &cap);
            else
                drain(st, &buf, &cap);
            status = 128 + SIGKILL;
            signalled = 1;
            break;
        }
        if (p[0].revents & POLLIN) {
            struct signalfd_siginfo info;
            while (read(sigfd, &info, sizeof info) > 0) {
            }
            int ws;
            pid_t pid;
            /* Reaps everything: the relay may be its namespace's init. */
            while ((pid = waitpid(-1, &ws, WNOHANG)) > 0) {
                if (pid == child) {
                    status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
                    signalled = WIFSIGNALED(ws);
                    exited_at = now_ms();
                    if (job)
                        job_reaped(job);
                }
            }
            all_gone = status >= 0 && queued && !program_left();
        }
    }
    long long oom_after = oom_kills();
    uint32_t kills = (oom_before < 0 || oom_after < 0) ? 0xffffffffu
                                                       : (uint32_t)(oom_after - oom_before);
    uint32_t s = (uint32_t)status;
    unsigned char end[8] = {s >> 24, s >> 16, s >> 8, s, kills >> 24, kills >> 16, kills >> 8,
                            kills};
    if (job)
        job_report(job, status, signalled, frame);
    frame('x', end, sizeof end);
    if (signalled && in_fd >= 0) {
        struct pollfd hup = {.fd = in_fd, .events = 0};
        while (poll(&hup, 1, -1) < 0 && errno == EINTR) {
        }
    }
    return 0;
}
