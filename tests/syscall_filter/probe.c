/*
 * What the kernel answers a sandboxed program that reaches for what exploits start from.
 *
 * Each call runs in a child of its own (a call that went through must not change the probe), and
 * is reported as one line: "probe NAME RESULT", RESULT being the errno (0: it went through) or
 * "signal N" when the child was killed. The arguments are ones that an unfiltered kernel would
 * accept or fault on (so a call that is not refused shows as 0, EFAULT, EINVAL, EBADF...), and
 * never EPERM or ENOSYS for the calls the filter is about.
 *
 * Then "works NAME ok" for what a normal program does: threads, fork and exec, a pipe, a socket;
 * first, "kernel release RELEASE", the kernel it runs on (gVisor's, under runsc).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

/* x86_64 numbers, for headers older than the calls. */
#define NR_io_uring_setup 425
#define NR_io_uring_enter 426
#define NR_io_uring_register 427
#define NR_open_tree 428
#define NR_move_mount 429
#define NR_fsopen 430
#define NR_clone3 435
#define NR_pidfd_getfd 438
#define NR_mount_setattr 442
#define X32_BIT 0x40000000L

#define AF_ALG_ 38
#define AF_VSOCK_ 40
#define READ_IMPLIES_EXEC_ 0x0400000
#define ADDR_NO_RANDOMIZE_ 0x0040000
#define UFFD_USER_MODE_ONLY_ 1
#define KCMP_VM_ 1
#define KEY_SPEC_PROCESS_KEYRING_ (-2)

static char zeros[4096];

/* Calls `call` in a child and prints how it fared. */
static void probe(const char *name, long (*call)(void)) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        printf("probe %s fork-failed %d\n", name, errno);
        return;
    }
    if (pid == 0) {
        errno = 0;
        long r = call();
        _exit(r < 0 ? (errno & 0xff) : 0);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFSIGNALED(status))
        printf("probe %s signal %d\n", name, WTERMSIG(status));
    else
        printf("probe %s %d\n", name, WEXITSTATUS(status));
}

/* A clone's child must leave at once, whatever it shares. */
static long clone_flags(unsigned long flags) {
    long r = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    if (r == 0)
        _exit(0);
    if (r > 0)
        waitpid((pid_t)r, 0, 0);
    return r;
}

static long clone3_flags(unsigned long long flags) {
    uint64_t args[11] = {0};
    args[0] = flags;
    args[4] = SIGCHLD; /* exit_signal */
    long r = syscall(NR_clone3, args, sizeof args);
    if (r == 0)
        _exit(0);
    if (r > 0)
        waitpid((pid_t)r, 0, 0);
    return r;
}

static long c_unshare_user(void) { return syscall(SYS_unshare, CLONE_NEWUSER); }
static long c_unshare_ns(void) { return syscall(SYS_unshare, CLONE_NEWNS); }
static long c_unshare_net(void) { return syscall(SYS_unshare, CLONE_NEWNET); }
static long c_unshare_pid(void) { return syscall(SYS_unshare, CLONE_NEWPID); }
static long c_unshare_uts(void) { return syscall(SYS_unshare, CLONE_NEWUTS); }
static long c_unshare_ipc(void) { return syscall(SYS_unshare, CLONE_NEWIPC); }
static long c_unshare_cgroup(void) { return syscall(SYS_unshare, CLONE_NEWCGROUP); }
static long c_unshare_files(void) { return syscall(SYS_unshare, CLONE_FILES); }
static long c_clone_newuser(void) { return clone_flags(CLONE_NEWUSER); }
static long c_clone_newnet(void) { return clone_flags(CLONE_NEWNET); }
static long c_clone_newns(void) { return clone_flags(CLONE_NEWNS); }
static long c_clone_newpid(void) { return clone_flags(CLONE_NEWPID); }
static long c_clone3(void) { return clone3_flags(0); }
static long c_clone3_newuser(void) { return clone3_flags(CLONE_NEWUSER); }
static long c_setns(void) {
    int fd = open("/proc/self/ns/uts", O_RDONLY);
    return syscall(SYS_setns, fd, 0);
}
static long c_mount_tmpfs(void) { return syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, 0); }
static long c_umount2(void) { return syscall(SYS_umount2, "/tmp", MNT_DETACH); }
static long c_pivot_root(void) { return syscall(SYS_pivot_root, "/tmp", "/tmp"); }
static long c_chroot(void) { return syscall(SYS_chroot, "/tmp"); }
static long c_open_tree(void) { return syscall(NR_open_tree, AT_FDCWD, "/tmp", 0); }
static long c_move_mount(void) { return syscall(NR_move_mount, -1, "", -1, "", 0); }
static long c_fsopen(void) { return syscall(NR_fsopen, "tmpfs", 0); }
static long c_mount_setattr(void) { return syscall(NR_mount_setattr, -1, "", 0, zeros, 32); }
static long c_socket_packet(void) { return syscall(SYS_socket, AF_PACKET, SOCK_RAW, 0x0300); }
static long c_socket_vsock(void) { return syscall(SYS_socket, AF_VSOCK_, SOCK_STREAM, 0); }
static long c_socket_vsock_high(void) {
    return syscall(SYS_socket, (1L << 32) | AF_VSOCK_, SOCK_STREAM, 0);
}
static long c_socket_alg(void) { return syscall(SYS_socket, AF_ALG_, SOCK_SEQPACKET, 0); }
static long c_io_uring_setup(void) { return syscall(NR_io_uring_setup, 1, zeros); }
static long c_io_uring_enter(void) { return syscall(NR_io_uring_enter, -1, 0, 0, 0, 0, 0); }
static long c_io_uring_register(void) { return syscall(NR_io_uring_register, -1, 0, 0, 0); }
static long c_bpf(void) { return syscall(SYS_bpf, 0, zeros, 8); }
static long c_keyctl(void) { return syscall(SYS_keyctl, 0, KEY_SPEC_PROCESS_KEYRING_, 1); }
static long c_add_key(void) {
    return syscall(SYS_add_key, "user", "probe", "x", 1, KEY_SPEC_PROCESS_KEYRING_);
}
static long c_request_key(void) { return syscall(SYS_request_key, "user", "probe", 0, 0); }
static long c_userfaultfd(void) { return syscall(SYS_userfaultfd, UFFD_USER_MODE_ONLY_); }
static long c_perf_event_open(void) { return syscall(SYS_perf_event_open, 0, 0, -1, -1, 0); }
static long c_open_by_handle_at(void) { return syscall(SYS_open_by_handle_at, -1, 0, 0); }
static long c_kcmp(void) {
    pid_t me = getpid();
    return syscall(SYS_kcmp, me, me, KCMP_VM_, 0, 0);
}
static long c_process_vm_readv(void) {
    return syscall(SYS_process_vm_readv, getpid(), 0, 0, 0, 0, 0);
}
static long c_process_vm_writev(void) {
    return syscall(SYS_process_vm_writev, getpid(), 0, 0, 0, 0, 0);
}
static long c_ptrace(void) { return syscall(SYS_ptrace, 0 /* PTRACE_TRACEME */, 0, 0, 0); }
static long c_pidfd_getfd(void) { return syscall(NR_pidfd_getfd, -1, 0, 0); }
static long c_personality_rie(void) { return syscall(SYS_personality, READ_IMPLIES_EXEC_); }
static long c_personality_norandom(void) { return syscall(SYS_personality, ADDR_NO_RANDOMIZE_); }
static long c_kexec_load(void) { return syscall(SYS_kexec_load, 0, 0, 0, 0); }
static long c_init_module(void) { return syscall(SYS_init_module, zeros, 0, ""); }
static long c_finit_module(void) { return syscall(SYS_finit_module, -1, "", 0); }
static long c_delete_module(void) { return syscall(SYS_delete_module, "probe", 0); }
static long c_reboot(void) { return syscall(SYS_reboot, 0, 0, 0, 0); }
static long c_swapon(void) { return syscall(SYS_swapon, "/tmp/none", 0); }
static long c_syslog(void) { return syscall(SYS_syslog, 10 /* SIZE_BUFFER */, 0, 0); }
static long c_acct(void) { return syscall(SYS_acct, 0); }
static long c_settimeofday(void) { return syscall(SYS_settimeofday, 0, 0); }
static long c_iopl(void) { return syscall(SYS_iopl, 0); }
static long c_set_mempolicy(void) { return syscall(SYS_set_mempolicy, 0, 0, 0); }
static long c_x32_getpid(void) { return syscall(X32_BIT | SYS_getpid); }
static long c_i386_getpid(void) {
    long r;
    /* getpid is 20 in the i386 table. */
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(20L) : "memory");
    if (r < 0 && r > -4096) {
        errno = (int)-r;
        return -1;
    }
    return r;
}

static void *thread_body(void *arg) { return arg; }

static void works(void) {
    /* Threads: glibc tries clone3 first and falls back to clone on ENOSYS. */
    pthread_t threads[4];
    int ok = 1;
    for (int i = 0; i < 4; i++)
        ok &= pthread_create(&threads[i], 0, thread_body, 0) == 0;
    for (int i = 0; ok && i < 4; i++)
        ok &= pthread_join(threads[i], 0) == 0;
    printf("works threads %s\n", ok ? "ok" : strerror(errno));

    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", "exit 7", (char *)0);
        _exit(1);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    printf("works fork_exec %s\n", WIFEXITED(status) && WEXITSTATUS(status) == 7 ? "ok" : "no");

    FILE *p = popen("echo piped", "r");
    char line[32] = {0};
    int piped = p && fgets(line, sizeof line, p) && strcmp(line, "piped\n") == 0;
    if (p)
        pclose(p);
    printf("works popen %s\n", piped ? "ok" : "no");

    int pair[2];
    int unix_ok = socketpair(AF_UNIX, SOCK_SEQPACKET, 0, pair) == 0;
    int inet = socket(AF_INET, SOCK_STREAM, 0);
    printf("works sockets %s\n", unix_ok && inet >= 0 ? "ok" : strerror(errno));
    printf("works personality_query %s\n", syscall(SYS_personality, 0xffffffffL) >= 0 ? "ok" : "no");
}

int main(void) {
    setvbuf(stdout, 0, _IOLBF, 0);
    struct utsname uts;
    if (uname(&uts) == 0)
        printf("kernel release %s\n", uts.release);
#define P(name) probe(#name, c_##name)
    P(unshare_user);
    P(unshare_ns);
    P(unshare_net);
    P(unshare_pid);
    P(unshare_uts);
    P(unshare_ipc);
    P(unshare_cgroup);
    P(unshare_files);
    P(clone_newuser);
    P(clone_newnet);
    P(clone_newns);
    P(clone_newpid);
    P(clone3);
    P(clone3_newuser);
    P(setns);
    P(mount_tmpfs);
    P(umount2);
    P(pivot_root);
    P(chroot);
    P(open_tree);
    P(move_mount);
    P(fsopen);
    P(mount_setattr);
    P(socket_packet);
    P(socket_vsock);
    P(socket_vsock_high);
    P(socket_alg);
    P(io_uring_setup);
    P(io_uring_enter);
    P(io_uring_register);
    P(bpf);
    P(keyctl);
    P(add_key);
    P(request_key);
    P(userfaultfd);
    P(perf_event_open);
    P(open_by_handle_at);
    P(kcmp);
    P(process_vm_readv);
    P(process_vm_writev);
    P(ptrace);
    P(pidfd_getfd);
    P(personality_rie);
    P(personality_norandom);
    P(kexec_load);
    P(init_module);
    P(finit_module);
    P(delete_module);
    P(reboot);
    P(swapon);
    P(syslog);
    P(acct);
    P(settimeofday);
    P(iopl);
    P(set_mempolicy);
    P(x32_getpid);
    P(i386_getpid);
    works();
    return 0;
}
