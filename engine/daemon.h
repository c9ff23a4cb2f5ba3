/* SPDX-License-Identifier: MIT */
/* --pidfile, --logfile and --daemon, for test beds without systemd (CLI only). */
#ifndef REBOUND_DAEMON_H
#define REBOUND_DAEMON_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Before anything is bound: 0 if path does not exist or names a process
 * that is gone (stale), -EEXIST if it names a running process, -EINVAL if
 * it holds something other than a PID (not ours to replace); err names the
 * path (and the PID).
 */
int rb_pidfile_check(const char *path, char *err, size_t errlen);

/* Write our PID to path and hold a lock on it until we exit: 0, -EEXIST or
 * -EINVAL as rb_pidfile_check says, or -errno if it cannot be written. */
int rb_pidfile_write(const char *path, char *err, size_t errlen);

/* Remove the pidfile we wrote, if it is still ours. Async-signal-safe. */
void rb_pidfile_remove(void);

/* Open path for appending (created with mode 0640): its descriptor, or -errno. */
int rb_logfile_open(const char *path, char *err, size_t errlen);

/* Make fd our stdout and stderr (and close it). */
void rb_output_to(int fd);

/*
 * Become a daemon: fork, setsid, fork again, stdin from /dev/null, stdout
 * and stderr to output_fd (a log file), or to /dev/null if output_fd < 0;
 * output_fd is closed. Returns 0 in the daemon, which must
 * call rb_daemon_ready once started. In the invoking process, waits for
 * that report and returns 1 with *status the exit status to leave with
 * (the daemon's error line, if any, printed to stderr). -errno if it
 * cannot fork (err says why).
 */
int rb_daemon_start(int output_fd, int *status, char *err, size_t errlen);

/* In a daemon: tell the invoking process how start-up went, 0 (ready) or
 * an exit status with its error line. Once; without --daemon, a no-op. */
void rb_daemon_ready(int status, const char *msg);

#endif
