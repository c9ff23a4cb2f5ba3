/* SPDX-License-Identifier: MIT */
/*
 * --pidfile, --logfile and --daemon (CLI only), for test beds without a
 * service manager. The daemon is the classic one (double fork, setsid),
 * with one change: the invoking process waits on a pipe until the daemon
 * says it is listening or why it is not, and exits with the status the
 * daemon would have, so a start-up error still reaches the shell that ran
 * it. The pidfile is locked (flock) for as long as we run: two instances
 * that both found it stale cannot both write it.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon.h"

static int pid_fd = -1;
static char pid_path[PATH_MAX];
static int ready_fd = -1; /* the daemon's end of the pipe to the invoking process */

/* The PID a pidfile holds: > 0, 0 if it is empty, -EINVAL if it is no PID. */
static long read_pid(int fd)
{
	char buf[32];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	size_t digits;
	long v;

	if (n < 0)
		return -errno;
	buf[n] = '\0';
	if (n == 0)
		return 0;
	digits = strspn(buf, "0123456789");
	if (digits == 0 || digits > 10 || (buf[digits] && strcmp(buf + digits, "\n") != 0))
		return -EINVAL;
	v = strtol(buf, NULL, 10);
	return v > 0 && v <= INT_MAX ? v : -EINVAL;
}

/* kill(pid, 0) says EPERM for a process that exists but is not ours. */
static bool running(long pid)
{
	return pid != (long)getpid() && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
}

/* What a pidfile's contents say about starting: 0 (absent, empty or stale)
 * or why not. */
static int judge(int fd, const char *path, char *err, size_t errlen)
{
	long pid = read_pid(fd);

	if (pid == -EINVAL) {
		snprintf(err, errlen, "--pidfile '%s' does not hold a PID: not replacing it", path);
		return -EINVAL;
	}
	if (pid > 0 && running(pid)) {
		snprintf(err, errlen, "--pidfile '%s' names a running process (PID %ld)", path,
		         pid);
		return -EEXIST;
	}
	return 0;
}

int rb_pidfile_check(const char *path, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY), rc;

	/* Anything else that stops us from reading it, rb_pidfile_write reports. */
	if (fd < 0)
		return 0;
	rc = judge(fd, path, err, errlen);
	close(fd);
	return rc;
}

int rb_pidfile_write(const char *path, char *err, size_t errlen)
{
	char buf[32];
	int fd, rc, len;

	if (strlen(path) >= sizeof(pid_path)) {
		snprintf(err, errlen, "cannot write --pidfile '%s': %s", path,
		         strerror(ENAMETOOLONG));
		return -ENAMETOOLONG;
	}
	/* Not through a symbolic link: a pidfile is often written as root. */
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW, 0644);
	if (fd < 0) {
		rc = -errno;
		snprintf(err, errlen, "cannot write --pidfile '%s': %s", path, strerror(-rc));
		return rc;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		rc = -errno;
		if (rc == -EWOULDBLOCK) {
			/* Another rebound holds it: a running process, with or
			 * without its PID written yet. */
			rc = judge(fd, path, err, errlen);
			if (rc == 0)
				snprintf(err, errlen, "--pidfile '%s' is held by a running process",
				         path);
			close(fd);
			return -EEXIST;
		}
		snprintf(err, errlen, "cannot lock --pidfile '%s': %s", path, strerror(-rc));
		close(fd);
		return rc;
	}
	/* Judged again under the lock: it may have changed since the check. */
	rc = judge(fd, path, err, errlen);
	if (rc < 0) {
		close(fd);
		return rc;
	}
	len = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
	errno = 0;
	if (ftruncate(fd, 0) < 0 || pwrite(fd, buf, (size_t)len, 0) != len) {
		rc = errno ? -errno : -EIO;
		snprintf(err, errlen, "cannot write --pidfile '%s': %s", path, strerror(-rc));
		unlink(path);
		close(fd);
		return rc;
	}
	memcpy(pid_path, path, strlen(path) + 1);
	pid_fd = fd;
	return 0;
}

void rb_pidfile_remove(void)
{
	struct stat ours, now;
	int fd = pid_fd;

	if (fd < 0)
		return;
	pid_fd = -1;
	/* Only the file we wrote: whatever replaced it is not ours. */
	if (fstat(fd, &ours) == 0 && stat(pid_path, &now) == 0 && ours.st_dev == now.st_dev &&
	    ours.st_ino == now.st_ino)
		unlink(pid_path);
	close(fd);
}

int rb_logfile_open(const char *path, char *err, size_t errlen)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY, 0640);

	if (fd < 0) {
		fd = -errno;
		snprintf(err, errlen, "cannot open --logfile '%s': %s", path, strerror(-fd));
	}
	return fd;
}

void rb_output_to(int fd)
{
	/* dup2 leaves the copies without FD_CLOEXEC, as stdio should be. */
	dup2(fd, STDOUT_FILENO);
	dup2(fd, STDERR_FILENO);
	if (fd > STDERR_FILENO)
		close(fd);
}

/* The report: one byte of exit status, then the error line (if any). */
static void report(int fd, int status, const char *msg)
{
	char buf[4096];
	size_t len = msg ? strlen(msg) : 0;

	if (len > sizeof(buf) - 1)
		len = sizeof(buf) - 1;
	buf[0] = (char)status;
	if (len)
		memcpy(buf + 1, msg, len);
	if (write(fd, buf, len + 1) < 0) {
		/* The invoking process is gone: nobody to tell. */
	}
}

/* In the invoking process: wait for the daemon's report. */
static int await_report(int fd)
{
	char buf[4097];
	size_t n = 0;
	ssize_t r;

	while (n < sizeof(buf) - 1 && (r = read(fd, buf + n, sizeof(buf) - 1 - n)) != 0) {
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	if (n == 0) {
		fprintf(stderr, "rebound: the daemon exited before it was ready\n");
		return 1;
	}
	buf[n] = '\0';
	if (buf[0] != 0 && n > 1)
		fprintf(stderr, "rebound: %s\n", buf + 1);
	return (unsigned char)buf[0];
}

int rb_daemon_start(int output_fd, int *status, char *err, size_t errlen)
{
	int p[2], st, rc, null;
	pid_t pid;

	if (pipe2(p, O_CLOEXEC) < 0) {
		rc = -errno;
		snprintf(err, errlen, "--daemon: %s", strerror(-rc));
		return rc;
	}
	pid = fork();
	if (pid < 0) {
		rc = -errno;
		snprintf(err, errlen, "--daemon: cannot fork: %s", strerror(-rc));
		close(p[0]);
		close(p[1]);
		return rc;
	}
	if (pid > 0) {
		/* Our stderr is still the invoking shell's: the report goes there. */
		if (output_fd >= 0)
			close(output_fd);
		close(p[1]);
		/* The first child leaves as soon as it has forked the daemon. */
		while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
			;
		*status = await_report(p[0]);
		return 1;
	}
	/* A new session without a controlling terminal; then a child that is not
	 * its leader, so opening a terminal can never make one ours. */
	close(p[0]);
	if (setsid() < 0) {
		char msg[128];
		snprintf(msg, sizeof(msg), "--daemon: setsid: %s", strerror(errno));
		report(p[1], 1, msg);
		_exit(1);
	}
	pid = fork();
	if (pid < 0) {
		char msg[128];
		snprintf(msg, sizeof(msg), "--daemon: cannot fork: %s", strerror(errno));
		report(p[1], 1, msg);
		_exit(1);
	}
	if (pid > 0)
		_exit(0);
	ready_fd = p[1];
	if (output_fd >= 0)
		rb_output_to(output_fd);
	null = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null >= 0) {
		dup2(null, STDIN_FILENO);
		if (output_fd < 0)
			rb_output_to(null);
		else if (null > STDERR_FILENO)
			close(null);
	}
	return 0;
}

void rb_daemon_ready(int status, const char *msg)
{
	if (ready_fd < 0)
		return;
	report(ready_fd, status, status ? msg : NULL);
	close(ready_fd);
	ready_fd = -1;
}
