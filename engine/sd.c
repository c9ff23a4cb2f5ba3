/* SPDX-License-Identifier: MIT */
/*
 * systemd integration without libsystemd: readiness notification over
 * $NOTIFY_SOCKET (sd_notify(3)'s datagram protocol) and socket activation
 * through $LISTEN_PID/$LISTEN_FDS (sd_listen_fds(3)). Used by the CLI only.
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

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
