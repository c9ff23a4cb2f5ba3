/* SPDX-License-Identifier: MIT */
/*
 * systemd integration without libsystemd: readiness notification over
 * $NOTIFY_SOCKET (sd_notify(3)'s datagram protocol) and socket activation
 * through $LISTEN_PID/$LISTEN_FDS (sd_listen_fds(3)), and the watchdog
 * ($WATCHDOG_USEC, sd_watchdog_enabled(3)) fed only while every worker is
 * alive. Used by the CLI only.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "rebound/rebound.h"
#include "sd.h"

static struct sockaddr_un notify_addr;
static socklen_t notify_len;
static int notify_fd = -1;

int rb_sd_notify_init(void)
{
	const char *path = getenv("NOTIFY_SOCKET");
	size_t len;

	if (!path || !*path)
		return 0;
	len = strlen(path);
	if ((path[0] != '/' && path[0] != '@') || len >= sizeof(notify_addr.sun_path))
		return -EINVAL;
	notify_addr.sun_family = AF_UNIX;
	memcpy(notify_addr.sun_path, path, len);
	if (path[0] == '@')
		notify_addr.sun_path[0] = '\0'; /* abstract namespace */
	notify_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
	notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (notify_fd < 0)
		return -errno;
	/* Children (none today) must not talk to the service manager for us. */
	unsetenv("NOTIFY_SOCKET");
	return 1;
}

int rb_sd_notify(const char *state)
{
	int saved = errno, rc = 0;

	/* sendto is async-signal-safe: this may run in a signal handler. */
	if (notify_fd >= 0 && sendto(notify_fd, state, strlen(state), MSG_NOSIGNAL,
	                             (const struct sockaddr *)&notify_addr, notify_len) < 0)
		rc = -errno;
	errno = saved;
	return rc;
}

void rb_sd_notify_fini(void)
{
	if (notify_fd >= 0)
		close(notify_fd);
	notify_fd = -1;
}

int rb_sd_listen_fds(void)
{
	const char *pid_s = getenv("LISTEN_PID"), *fds_s = getenv("LISTEN_FDS");
	char *end;
	long pid, n;

	if (!pid_s || !fds_s)
		return 0;
	errno = 0;
	pid = strtol(pid_s, &end, 10);
	if (errno || *end || pid != (long)getpid())
		return 0; /* meant for another process */
	n = strtol(fds_s, &end, 10);
	if (errno || *end || n < 0 || n > 64)
		return -EINVAL;
	for (int fd = RB_SD_LISTEN_FDS_START; fd < RB_SD_LISTEN_FDS_START + n; fd++) {
		int fl = fcntl(fd, F_GETFD);
		if (fl < 0)
			return -EBADF;
		fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
	}
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	return (int)n;
}

/* ---- watchdog ---- */

static struct {
	pthread_t thread;
	bool running;
	int stop_fd;
	int period_ms;
	struct rb_server *srv;
	const struct rb_config *cfg;
} wd = {.stop_fd = -1};

/*
 * Every quarter of the watchdog period, one heartbeat round: WATCHDOG=1 goes
 * out only if every worker answered the previous round, so a stuck worker
 * lets the period lapse and systemd restarts the service (Restart=).
 */
static void *watchdog_main(void *arg)
{
	struct pollfd pfd = {.fd = wd.stop_fd, .events = POLLIN};
	bool stuck = false;

	(void)arg;
	for (;;) {
		int n = poll(&pfd, 1, wd.period_ms);
		if (n < 0 && errno == EINTR)
			continue;
		if (n != 0)
			break; /* asked to stop */
		int late = rb_server_heartbeat(wd.srv);
		if (late == 0) {
			rb_sd_notify("WATCHDOG=1");
			if (stuck)
				rb_log(wd.cfg, RB_LOG_NOTICE, "watchdog: every worker is back");
		} else if (!stuck) {
			rb_log(wd.cfg, RB_LOG_ERR,
			       "watchdog: %d worker%s not back in the event loop: withholding "
			       "WATCHDOG=1",
			       late, late == 1 ? "" : "s");
		}
		stuck = late != 0;
	}
	return NULL;
}

int rb_sd_watchdog_start(struct rb_server *srv, const struct rb_config *cfg)
{
	const char *usec_s = getenv("WATCHDOG_USEC"), *pid_s = getenv("WATCHDOG_PID");
	unsigned long long usec;
	sigset_t all, old;
	char *end;
	int err;

	if (!usec_s || notify_fd < 0)
		return 0;
	if (pid_s) {
		errno = 0;
		long pid = strtol(pid_s, &end, 10);
		if (errno || *end || pid != (long)getpid())
			return 0; /* meant for another process */
	}
	errno = 0;
	usec = strtoull(usec_s, &end, 10);
	if (errno || *end || usec == 0)
		return -EINVAL;
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
	wd.period_ms = usec / 4000 > 0 ? (usec / 4000 < 3600000 ? (int)(usec / 4000) : 3600000) : 1;
	wd.srv = srv;
	wd.cfg = cfg;
	wd.stop_fd = eventfd(0, EFD_CLOEXEC);
	if (wd.stop_fd < 0)
		return -errno;
	/* Signals are for the main thread (the CLI's handlers); not this one. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	err = pthread_create(&wd.thread, NULL, watchdog_main, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err) {
		close(wd.stop_fd);
		wd.stop_fd = -1;
		return -err;
	}
	wd.running = true;
	return 1;
}

void rb_sd_watchdog_stop(void)
{
	uint64_t one = 1;

	if (!wd.running)
		return;
	if (write(wd.stop_fd, &one, sizeof(one)) < 0) {
		/* Cannot fail on a fresh eventfd; pthread_join would wait forever. */
	}
	pthread_join(wd.thread, NULL);
	close(wd.stop_fd);
	wd.stop_fd = -1;
	wd.running = false;
}
