/*
 * compilerd's output relay: runs inside every sandbox as the parent of the program.
 *
 *   relay [--user UID:GID] COMMAND [ARG]...
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
 * a later write never overtakes an earlier one. Each write leaves the relay on its own stdout as a
 * frame: one kind byte ('o' stdout, 'e' stderr, 'x' exit), a 4-byte big-endian length, the payload.
 * The exit frame's payload is the program's status (exit code, or 128+signal) and the number of
 * OOM kills the sandbox's memory cgroup counted during the run (0xffffffff: unknown), both 4-byte
 * big-endian. It is the last frame; a stream that ends without it did not end normally.
 *
 * The program can only write to its two sockets: the relay's stdout is not inherited, and the
 * relay makes itself non-dumpable so that a process of the same user can neither ptrace it nor
 * open its descriptors through /proc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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
        if (s->len > *cap) {
            free(*buf);
            *cap = s->len;
            *buf = malloc(*cap);
            if (!*buf)
                die("allocating");
        }
        ssize_t n = recv(s->fd, *buf, s->len ? s->len : 1, MSG_DONTWAIT);
        if (n < 0)
            die("reading the program's output");
        frame(s->kind, *buf, (uint32_t)n);
        moved++;
    }
}

static void pair(int sv[2]) {
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        die("socketpair");
    int one = 1, size = SEND_BUFFER;
    if (setsockopt(sv[0], SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one) < 0)
        die("SO_TIMESTAMPNS");
    if (setsockopt(sv[1], SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size) < 0)
        setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
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
    if (argc < 2) {
        dprintf(2, "usage: compilerd-relay [--user UID:GID] COMMAND [ARG]...\n");
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
    long long oom_before = oom_kills();
    int o[2], e[2];
    pair(o);
    pair(e);

    int refused[2] = {-1, -1};
    if (drop) {
        if (pipe2(refused, O_CLOEXEC) < 0)
            die("pipe");
        refused_fd = refused[1];
    }
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
        execvp(argv[1], argv + 1);
        dprintf(2, "%s: %s\n", argv[1], strerror(errno));
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
    long long exited_at = 0;
    for (;;) {
        drain(st, &buf, &cap);
        if (status >= 0 && ((st[0].fd < 0 && st[1].fd < 0) ||
                            now_ms() - exited_at >= LEFTOVER_GRACE_MS))
            break;
        struct pollfd p[3] = {{.fd = sigfd, .events = POLLIN},
                              {.fd = st[0].fd, .events = POLLIN},
                              {.fd = st[1].fd, .events = POLLIN}};
        int timeout = -1;
        if (status >= 0) {
            long long left = LEFTOVER_GRACE_MS - (now_ms() - exited_at);
            timeout = left > 0 ? (int)left : 0;
        }
        if (poll(p, 3, timeout) < 0 && errno != EINTR)
            die("poll");
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
                }
            }
        }
    }
    long long oom_after = oom_kills();
    uint32_t kills = (oom_before < 0 || oom_after < 0) ? 0xffffffffu
                                                       : (uint32_t)(oom_after - oom_before);
    uint32_t s = (uint32_t)status;
    unsigned char end[8] = {s >> 24, s >> 16, s >> 8, s, kills >> 24, kills >> 16, kills >> 8,
                            kills};
    frame('x', end, sizeof end);
    if (signalled && in_fd >= 0) {
        struct pollfd hup = {.fd = in_fd, .events = 0};
        while (poll(&hup, 1, -1) < 0 && errno == EINTR) {
        }
    }
    return 0;
}
