/* SPDX-License-Identifier: MIT */
/* What every worker has, whichever model drives it: a pool, a control
 * eventfd, the listeners, a reserve descriptor, counters. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "internal.h"

int rb__worker_init(struct rb_worker *w, struct rb_server *srv, unsigned id)
{
	const struct rb_config *cfg = &srv->cfg;
	size_t limit = cfg->max_memory ? cfg->max_memory / srv->n_workers : 0;
	int err;

	w->srv = srv;
	w->id = id;
	w->ops = srv->ops;
	w->ctl_fd = -1;
	w->reserve_fd = -1;
	rb_list_init(&w->conns);
	rb_list_init(&w->ready);
	rb_list_init(&w->memwait);
	rb_list_init(&w->grave);
	if (limit && limit < cfg->chunk_size)
		limit = cfg->chunk_size;
	err = rb_pool_init(&w->pool, cfg->chunk_size, cfg->pool_cache, limit);
	if (err < 0)
		return err;
	w->ctl_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (w->ctl_fd < 0)
		return -errno;
	for (size_t i = 0; i < srv->n_listen; i++) {
		struct rb_listener *l = &w->listeners[i];
		l->h.kind = RB_H_LISTENER;
		l->fd = srv->listen_fds[i];
		l->port = srv->ports[i];
		if (id > 0 && rb__udp_per_worker(srv, i)) {
			/* The first socket is bound: this one joins its port. */
			struct rb_addr a = srv->addrs[i];
			struct rb_listen_opts o = {.reuseport = true};
			char why[256];
			int fd = rb__listen(&a, &o, why, sizeof(why));
			if (fd < 0) {
				rb__log(RB_LOG_ERR, "%s", why);
				return fd;
			}
			l->fd = fd;
			l->owned = true;
		}
	}
	w->n_listeners = srv->n_listen;
	w->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
#if RB_HAVE_URING
	if (srv->engine == RB_ENGINE_URING)
		return rb__uring_worker_init(w);
#endif
	return rb__reactor_worker_init(w);
}

void rb__tune_accepted(struct rb_worker *w, int fd, bool tcp)
{
	const struct rb_config *cfg = &w->srv->cfg;
	int one = 1;

	if (!tcp)
		return;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	/* A peer that vanished (a dropped link, a host that died) would hold
	 * its descriptor and buffers for ever: keepalive probes find it, and
	 * the user timeout ends one whose data is never acknowledged. */
	if (cfg->keepalive_idle_s) {
		int idle = (int)cfg->keepalive_idle_s, intvl = (int)cfg->keepalive_intvl_s,
		    cnt = (int)cfg->keepalive_cnt;
		setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
	}
	if (cfg->user_timeout_ms) {
		unsigned ut = cfg->user_timeout_ms;
		setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ut, sizeof(ut));
	}
}

void rb__stop_deadline_close(struct rb_worker *w, int fd, uint64_t pending)
{
	/* Empty the receive queue, or close() itself sends an RST. */
	while (recv(fd, w->scratch, sizeof(w->scratch), MSG_DONTWAIT) > 0)
		;
	if (pending > 0) {
		struct linger lg = {.l_onoff = 1, .l_linger = 0};
		int unsent = 0;
		if (ioctl(fd, SIOCOUTQ, &unsent) < 0 || unsent < 0)
			unsent = 0;
		RB_STAT_ADD(w, stop_dropped_conns, 1);
		RB_STAT_ADD(w, stop_dropped_bytes, pending + (uint64_t)unsent);
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
}

bool rb__worker_control(struct rb_worker *w)
{
	uint64_t v;

	while (read(w->ctl_fd, &v, sizeof(v)) == (ssize_t)sizeof(v))
		;
	/* Back in the event loop: answer the watchdog's heartbeat (watchdog.c). */
	__atomic_store_n(&w->heartbeat_seen, __atomic_load_n(&w->srv->heartbeat, __ATOMIC_ACQUIRE),
			 __ATOMIC_RELEASE);
	if (__atomic_exchange_n(&w->srv->stats_requested, 0, __ATOMIC_RELAXED)) {
		struct rb_stats st;
		char json[2048];
		rb_server_stats(w->srv, &st);
		rb_stats_json(&st, json, sizeof(json));
		rb__log(RB_LOG_ERR, "stats %s", json);
	}
	return __atomic_load_n(&w->srv->stop_requested, __ATOMIC_RELAXED);
}

/*
 * EMFILE/ENFILE at accept: accept the waiting peer with the reserve
 * descriptor and close it at once, so it gets a clean close instead of
 * waiting in the backlog, and nobody spins. Logged at most once a second.
 * Returns false if even that failed (the caller backs off).
 */
bool rb__accept_reserve(struct rb_worker *w, int lfd, int err)
{
	unsigned sup;
	int fd;

	if (rb__ratelimit_ok(&w->rl_emfile, &sup))
		rb__log(RB_LOG_ERR, "accept: %s: refusing connections (%u more suppressed)",
			strerror(err), sup);
	if (w->reserve_fd < 0)
		return false;
	close(w->reserve_fd);
	w->reserve_fd = -1;
	fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd >= 0) {
		close(fd);
		RB_STAT_ADD(w, refused, 1);
	}
	w->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	return fd >= 0 && w->reserve_fd >= 0;
}

int rb__worker_run(struct rb_worker *w)
{
	int rc;

	/* The worker logs with its server's settings while it runs. */
	rb__log_bind(&w->srv->cfg);
#if RB_HAVE_URING
	if (w->srv->engine == RB_ENGINE_URING)
		rc = rb__uring_run(w);
	else
#endif
		rc = rb__reactor_run(w);
	rb__log_unbind(&w->srv->cfg);
	return rc;
}

void rb__worker_fini(struct rb_worker *w)
{
#if RB_HAVE_URING
	if (w->srv->engine == RB_ENGINE_URING)
		rb__uring_worker_fini(w);
	else
#endif
		rb__reactor_worker_fini(w);
	rb__pipes_fini(w);
	for (size_t i = 0; i < w->n_listeners; i++) {
		if (w->listeners[i].owned)
			close(w->listeners[i].fd);
		w->listeners[i].owned = false;
	}
	if (w->ctl_fd >= 0)
		close(w->ctl_fd);
	w->ctl_fd = -1;
	if (w->reserve_fd >= 0)
		close(w->reserve_fd);
	w->reserve_fd = -1;
	rb_pool_fini(&w->pool);
}
