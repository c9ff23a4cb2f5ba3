/* SPDX-License-Identifier: MIT */
/*
 * Worker liveness for a watchdog (systemd's WatchdogSec=). A heartbeat
 * round asks every worker, through its control eventfd, to check in; a
 * worker checks in when its event loop handles the control event
 * (rb__worker_control), so one that is stuck (in a syscall, a loop, a log
 * sink) misses the round. The caller pings its watchdog only after a round
 * that every worker answered.
 */
#include <errno.h>
#include <unistd.h>

#include "internal.h"

int rb_server_heartbeat(struct rb_server *srv)
{
	unsigned round = __atomic_load_n(&srv->heartbeat, __ATOMIC_RELAXED);
	uint64_t one = 1;
	int saved = errno, late = 0;

	for (unsigned i = 0; i < srv->n_workers; i++)
		if (__atomic_load_n(&srv->workers[i].heartbeat_seen, __ATOMIC_ACQUIRE) != round)
			late++;
	__atomic_store_n(&srv->heartbeat, round + 1, __ATOMIC_RELEASE);
	for (unsigned i = 0; i < srv->n_workers; i++) {
		int fd = srv->workers[i].ctl_fd;
		if (fd >= 0 && write(fd, &one, sizeof(one)) < 0) {
			/* A full eventfd already holds a wakeup. */
		}
	}
	errno = saved;
	return late;
}
