/* compilerd-relay's job mode (job.c): the daemon's header on stdin says what to run. */
#include <stdint.h>
#include <sys/types.h>

struct job;

/* Emits one frame to the daemon (relay.c's `frame`). */
typedef void (*job_emit_fn)(char kind, const void *data, uint32_t len);
/* Reads the header from fd 0. NULL: a legacy run, the program follows on stdin (also on an empty
 * stdin); else the job. Exits with status 125 on a malformed header. */
struct job *job_read(int drop);
/* The command line to exec instead of the relay's own arguments. */
char **job_argv(struct job *job);
/* Called before the fork: the CPU clock's base. */
void job_before_fork(struct job *job);
/* In the child, after the drop and the stdout/stderr sockets: the files, stdin, cwd, rlimits. */
void job_enter(struct job *job);
/* The poll timeout while the stage runs (-1: none). */
int job_poll_ms(struct job *job);
/* After each wake-up while the stage runs: kills it when it is over its CPU or wall time. 1: the
 * relay cannot kill it (it runs as another user, with --user) and must report the stage as
 * killed now; the daemon then removes the container, and everything in it. */
int job_check(struct job *job, pid_t child);
/* When the stage's main process is reaped. */
void job_reaped(struct job *job);
/* Before the exit frame: the measurements ('m') and, after a clean exit, the kept files ('f'). */
void job_report(struct job *job, int status, int signalled, job_emit_fn emit);
