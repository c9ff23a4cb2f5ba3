/* SPDX-License-Identifier: MIT */
/* What every worker has, whichever model drives it: a pool, a control
 * eventfd, the listeners, a reserve descriptor, counters. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <arpa/inet.h>
#include <sys/un.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "internal.h"

/*
 * --stats-interval: a line with every counter and the rates since the last
 * line (text: "stats {...} rates {...}"; JSON: one object).
 */
static void stats_tick(struct rb_timer *t, void *arg)
{
	struct rb_worker *w = arg;
	uint64_t now = rb__now_us(), dt = (now - w->stats_prev_us) / RB_US_PER_MS;
	char json[RB_STATS_JSON_MAX], rates[256], text[RB_STATS_JSON_MAX + 300],
	        fields[RB_STATS_JSON_MAX + 300];
	struct rb_stats st;

	rb_server_stats_json(w->srv, json, sizeof(json));
	rb_server_stats(w->srv, &st);
	if (dt == 0)
		dt = 1;
	snprintf(rates, sizeof(rates),
	         "{\"interval_ms\":%" PRIu64 ",\"accepted_per_s\":%" PRIu64
	         ",\"bytes_in_per_s\":%" PRIu64 ",\"bytes_out_per_s\":%" PRIu64 "}",
	         dt, (st.accepted - w->stats_prev.accepted) * 1000 / dt,
	         (st.bytes_in - w->stats_prev.bytes_in) * 1000 / dt,
	         (st.bytes_out - w->stats_prev.bytes_out) * 1000 / dt);
	snprintf(text, sizeof(text), "stats %s rates %s", json, rates);
	snprintf(fields, sizeof(fields), "\"event\":\"stats\",\"stats\":%s,\"rates\":%s", json,
	         rates);
	rb__log_event(RB_LOG_INFO, text, fields);
	w->stats_prev = st;
	w->stats_prev_us = now;
	rb__timer_arm(&w->timers, t, now + rb__ms_to_us(w->srv->cfg.stats_interval_ms));
}

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
			struct rb_listen_opts o = {.reuseport = true,
			                           .backlog = cfg->backlog,
			                           .unix_mode = cfg->unix_mode};
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
	if (id == 0 && cfg->stats_interval_ms) {
		/* Worker 0 writes the periodic stats line, from its own timers. */
		rb__timer_init(&w->stats_timer, stats_tick);
		w->stats_prev_us = rb__now_us();
		rb__timer_arm(&w->timers, &w->stats_timer,
		              w->stats_prev_us + rb__ms_to_us(cfg->stats_interval_ms));
	}
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
	if (cfg->busy_poll_us) {
		int us = (int)cfg->busy_poll_us;
		setsockopt(fd, SOL_SOCKET, SO_BUSY_POLL, &us, sizeof(us));
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
		char json[RB_STATS_JSON_MAX], text[RB_STATS_JSON_MAX + 16],
		        fields[RB_STATS_JSON_MAX + 32];
		rb_server_stats_json(w->srv, json, sizeof(json));
		snprintf(text, sizeof(text), "stats %s", json);
		snprintf(fields, sizeof(fields), "\"event\":\"stats\",\"stats\":%s", json);
		rb__log_report(text, fields);
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
	rb__timer_arm(&w->timers, &w->stop_timer,
	              rb__now_us() + rb__ms_to_us(w->srv->cfg.shutdown_timeout_ms));
	return true;
}

void rb__worker_release_listeners(struct rb_worker *w)
{
	rb__listen_set_release(&w->srv->ls);
}

void rb__worker_listeners_off(struct rb_worker *w,
                              void (*unwatch)(struct rb_worker *w, struct rb_listener *l))
{
	for (size_t i = 0; i < w->n_listeners; i++) {
		struct rb_listener *l = &w->listeners[i];
		if (l->active)
			unwatch(w, l);
		l->active = false;
		l->pending = false;
		rb__timer_cancel(&w->timers, &l->retry);
	}
	rb__worker_release_listeners(w);
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

/* ---- session accounting, shared by the models ---- */

bool rb__worker_admit(struct rb_worker *w, int fd)
{
	unsigned max = w->srv->cfg.max_conns;

	if (!max)
		return true;
	if (__atomic_add_fetch(&w->srv->n_sessions, 1, __ATOMIC_RELAXED) <= max)
		return true;
	__atomic_sub_fetch(&w->srv->n_sessions, 1, __ATOMIC_RELAXED);
	/* Accepted and reset at once: the peer learns now, and nothing waits
	 * in the backlog for a slot. */
	RB_STAT_ADD(w, refused, 1);
	RB_STAT_ADD(w, refused_limit, 1);
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &(struct linger){.l_onoff = 1, .l_linger = 0},
	           sizeof(struct linger));
	close(fd);
	return false;
}

void rb__worker_unadmit(struct rb_worker *w)
{
	if (w->srv->cfg.max_conns)
		__atomic_sub_fetch(&w->srv->n_sessions, 1, __ATOMIC_RELAXED);
}

/* "127.0.0.1:5555", "[::1]:5555", "unix:/path" or "unix" (unnamed). */
static void addr_string(int fd, bool peer, char *buf, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[INET6_ADDRSTRLEN] = "?";
	int rc = peer ? getpeername(fd, (struct sockaddr *)&ss, &sl)
	              : getsockname(fd, (struct sockaddr *)&ss, &sl);

	if (rc < 0) {
		snprintf(buf, len, "?");
		return;
	}
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;
		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		snprintf(buf, len, "%s:%u", host, ntohs(sin->sin_port));
	} else if (ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&ss;
		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, ntohs(sin6->sin6_port));
	} else if (ss.ss_family == AF_UNIX) {
		const struct sockaddr_un *sun = (const struct sockaddr_un *)&ss;
		size_t n = sl > offsetof(struct sockaddr_un, sun_path)
		                   ? sl - offsetof(struct sockaddr_un, sun_path)
		                   : 0;
		if (n == 0 || sun->sun_path[0] == '\0')
			snprintf(buf, len, "unix");
		else
			snprintf(buf, len, "unix:%.*s", (int)strnlen(sun->sun_path, n),
			         sun->sun_path);
	} else {
		snprintf(buf, len, "?");
	}
}

static const char *const reason_names[] = {
        [RB_CLOSE_EOF] = "eof",           [RB_CLOSE_ERROR] = "reset",
        [RB_CLOSE_IDLE] = "idle-timeout", [RB_CLOSE_WRITE_TIMEOUT] = "write-timeout",
        [RB_CLOSE_SHUTDOWN] = "shutdown",
};

void rb__upstream_connected(struct rb_worker *w, uint64_t us)
{
	RB_STAT_ADD(w, upstream_connects, 1);
	RB_STAT_ADD(w, connect_us, us);
	if (us < 1000)
		RB_STAT_ADD(w, connect_under_1ms, 1);
	else if (us < 10000)
		RB_STAT_ADD(w, connect_under_10ms, 1);
	else if (us < 100000)
		RB_STAT_ADD(w, connect_under_100ms, 1);
	else if (us < 1000000)
		RB_STAT_ADD(w, connect_under_1s, 1);
	else
		RB_STAT_ADD(w, connect_over_1s, 1);
}

/* The addresses, taken at open: at close the peer may be gone. */
struct rb_session_addrs {
	char peer[112], local[112];
};

static void log_session(struct rb_worker *w, const struct rb_session *s, const char *event,
                        const char *reason, uint64_t dur_us)
{
	char text[1024], fields[1536], pe[240], le[240];
	const char *peer = s->addrs ? s->addrs->peer : "?",
	           *local = s->addrs ? s->addrs->local : "?";

	rb__json_escape(pe, sizeof(pe), peer);
	rb__json_escape(le, sizeof(le), local);
	if (!reason) {
		snprintf(text, sizeof(text),
		         "session %u.%" PRIu64 " open: peer %s, local %s, engine %s", w->id, s->id,
		         peer, local, w->eng->name);
		snprintf(fields, sizeof(fields),
		         "\"event\":\"%s\",\"session\":\"%u.%" PRIu64
		         "\",\"peer\":\"%s\",\"local\":\"%s\","
		         "\"engine\":\"%s\"",
		         event, w->id, s->id, pe, le, w->eng->name);
	} else {
		snprintf(text, sizeof(text),
		         "session %u.%" PRIu64 " close: peer %s, local %s, engine %s, %" PRIu64
		         " bytes in, %" PRIu64 " bytes out, %" PRIu64 ".%06" PRIu64 " s, %s",
		         w->id, s->id, peer, local, w->eng->name, s->bytes_in, s->bytes_out,
		         dur_us / 1000000, dur_us % 1000000, reason);
		snprintf(fields, sizeof(fields),
		         "\"event\":\"%s\",\"session\":\"%u.%" PRIu64
		         "\",\"peer\":\"%s\",\"local\":\"%s\","
		         "\"engine\":\"%s\",\"bytes_in\":%" PRIu64 ",\"bytes_out\":%" PRIu64
		         ",\"duration_s\":%" PRIu64 ".%06" PRIu64 ",\"reason\":\"%s\"",
		         event, w->id, s->id, pe, le, w->eng->name, s->bytes_in, s->bytes_out,
		         dur_us / 1000000, dur_us % 1000000, reason);
	}
	rb__log_event(RB_LOG_INFO, text, fields);
}

void rb__session_opened(struct rb_worker *w, struct rb_session *s)
{
	s->id = ++w->session_seq;
	s->open_us = rb__now_us();
	s->last_io_us = s->last_write_us = s->open_us;
	if (w->srv->cfg.log_connections) {
		s->addrs = malloc(sizeof(*s->addrs));
		if (s->addrs) {
			addr_string(s->sock[0].fd, true, s->addrs->peer, sizeof(s->addrs->peer));
			addr_string(s->sock[0].fd, false, s->addrs->local, sizeof(s->addrs->local));
		}
		log_session(w, s, "open", NULL, 0);
	}
}

void rb__session_closing(struct rb_worker *w, struct rb_session *s, enum rb_close_reason why)
{
	uint64_t dur = rb__now_us() - s->open_us, bytes = s->bytes_in + s->bytes_out;

	if (w->srv->cfg.log_connections) {
		log_session(w, s, "close", reason_names[why], dur);
		free(s->addrs);
		s->addrs = NULL;
	}
	if (w->srv->cfg.max_conns)
		__atomic_sub_fetch(&w->srv->n_sessions, 1, __ATOMIC_RELAXED);
	switch (why) {
	case RB_CLOSE_EOF:
		RB_STAT_ADD(w, closed_eof, 1);
		break;
	case RB_CLOSE_ERROR:
		RB_STAT_ADD(w, closed_error, 1);
		RB_STAT_ADD(w, resets, 1);
		break;
	case RB_CLOSE_IDLE:
		RB_STAT_ADD(w, closed_idle, 1);
		break;
	case RB_CLOSE_WRITE_TIMEOUT:
		RB_STAT_ADD(w, closed_write_timeout, 1);
		break;
	case RB_CLOSE_SHUTDOWN:
		RB_STAT_ADD(w, closed_shutdown, 1);
		break;
	}
	RB_STAT_ADD(w, duration_us, dur);
	RB_STAT_ADD(w, session_bytes, bytes);
	if (dur < 1000)
		RB_STAT_ADD(w, duration_under_1ms, 1);
	else if (dur < 10000)
		RB_STAT_ADD(w, duration_under_10ms, 1);
	else if (dur < 100000)
		RB_STAT_ADD(w, duration_under_100ms, 1);
	else if (dur < 1000000)
		RB_STAT_ADD(w, duration_under_1s, 1);
	else if (dur < 10000000)
		RB_STAT_ADD(w, duration_under_10s, 1);
	else if (dur < 100000000)
		RB_STAT_ADD(w, duration_under_100s, 1);
	else
		RB_STAT_ADD(w, duration_over_100s, 1);
	if (bytes < 1024)
		RB_STAT_ADD(w, session_bytes_under_1k, 1);
	else if (bytes < 65536)
		RB_STAT_ADD(w, session_bytes_under_64k, 1);
	else if (bytes < (1u << 20))
		RB_STAT_ADD(w, session_bytes_under_1m, 1);
	else if (bytes < (64u << 20))
		RB_STAT_ADD(w, session_bytes_under_64m, 1);
	else
		RB_STAT_ADD(w, session_bytes_over_64m, 1);
	/* Last: a reader that sees it closed sees why (resets) and its sizes. */
	__atomic_thread_fence(__ATOMIC_RELEASE);
	RB_STAT_SUB(w, active, 1);
	RB_STAT_ADD(w, closed, 1);
}

uint64_t rb__timeouts_due(const struct rb_config *cfg, const struct rb_session *s, bool pending,
                          uint64_t now)
{
	uint64_t at = UINT64_MAX;

	if (cfg->idle_timeout_ms)
		at = s->last_io_us + rb__ms_to_us(cfg->idle_timeout_ms);
	if (cfg->write_timeout_ms) {
		uint64_t wt =
		        (pending ? s->last_write_us : now) + rb__ms_to_us(cfg->write_timeout_ms);
		if (wt < at)
			at = wt;
	}
	return at;
}

enum rb_timeout rb__timeouts_expired(const struct rb_config *cfg, const struct rb_session *s,
                                     bool pending, uint64_t now)
{
	if (cfg->write_timeout_ms && pending &&
	    now - s->last_write_us >= rb__ms_to_us(cfg->write_timeout_ms))
		return RB_TIMEOUT_WRITE;
	if (cfg->idle_timeout_ms && now - s->last_io_us >= rb__ms_to_us(cfg->idle_timeout_ms))
		return RB_TIMEOUT_IDLE;
	return RB_TIMEOUT_NONE;
}

void rb__session_linger0(struct rb_session *s)
{
	struct linger lg = {.l_onoff = 1, .l_linger = 0};

	for (unsigned i = 0; i < s->n_socks; i++)
		if (s->sock[i].fd >= 0)
			setsockopt(s->sock[i].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}
