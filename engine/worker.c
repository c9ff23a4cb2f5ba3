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
	w->eng = srv->eng;
	w->ctl_fd = -1;
	w->reserve_fd = -1;
	rb__timers_init(&w->timers);
	rb__pipe_cache_init(&w->pipes, srv->pipe_size);
	/* The copy strategy is chosen here, once: new flows take it. */
	w->copy = cfg->copy == RB_COPY_SPLICE ? &rb__copy_splice : &rb__copy_writev;
	if (limit && limit < cfg->chunk_size)
		limit = cfg->chunk_size;
	err = rb_pool_init(&w->pool, cfg->chunk_size, cfg->pool_cache, limit);
	if (err < 0)
		return err;
	w->ctl_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (w->ctl_fd < 0)
		return -errno;
	for (size_t i = 0; i < srv->ls.n; i++) {
		struct rb_listener *l = &w->listeners[i];
		l->h.kind = RB_H_LISTENER;
		l->fd = srv->ls.fds[i];
		l->port = srv->ls.ports[i];
		l->is_udp = srv->ls.addrs[i].is_udp;
		l->tcp = !srv->ls.addrs[i].is_unix && !l->is_udp;
		if (id > 0 && srv->ls.per_worker[i]) {
			/* The first socket is bound: this one joins its port. */
			struct rb_addr a = srv->ls.addrs[i];
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
	w->n_listeners = srv->ls.n;
	w->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	return 0;
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
static bool accept_reserve(struct rb_worker *w, int lfd, int err)
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

bool rb__worker_begin_stop(struct rb_worker *w, rb_timer_fn *on_deadline)
{
	if (w->stopping)
		return false;
	w->stopping = true;
	rb__timer_init(&w->stop_timer, on_deadline);
	rb__timer_arm(&w->timers, &w->stop_timer, rb__now_ms() + w->srv->cfg.shutdown_timeout_ms);
	return true;
}

void rb__worker_release_listeners(struct rb_worker *w)
{
	rb__listen_set_release(&w->srv->ls);
}

enum rb_accept_next rb__accept_error(struct rb_worker *w, int lfd, int err)
{
	switch (err) {
	case EAGAIN:
	case ECANCELED:
		return RB_ACCEPT_IDLE;
	case EINTR:
	case ECONNABORTED:
	case EPROTO:
		return RB_ACCEPT_RETRY;
	case EMFILE:
	case ENFILE:
	case ENOBUFS:
	case ENOMEM:
		return accept_reserve(w, lfd, err) ? RB_ACCEPT_RETRY : RB_ACCEPT_BACKOFF;
	default:
		rb__log(RB_LOG_ERR, "accept: %s", strerror(err));
		return RB_ACCEPT_BACKOFF;
	}
}

void rb__refuse(struct rb_worker *w, int fd, int err)
{
	unsigned sup;

	close(fd);
	RB_STAT_ADD(w, refused, 1);
	if (rb__ratelimit_ok(&w->rl_emfile, &sup))
		rb__log(RB_LOG_ERR, "refusing connection on fd %d: %s (%u more suppressed)", fd,
		        strerror(-err), sup);
}

void rb__worker_fini(struct rb_worker *w)
{
	rb__pipe_cache_fini(&w->pipes);
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
