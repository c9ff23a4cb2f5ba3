// SPDX-License-Identifier: MIT
#include "run.h"

#include <errno.h>
#include <linux/sockios.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF_SIZE   (256 * 1024)
#define SBUF_SIZE   (64 * 1024) /* at most RBB_STREAM_WINDOW */
#define MAX_EVENTS  256
#define TICK_NS     100000000ULL /* longest epoll_wait: stop and stall checks */
#define RETRY_NS    10000000ULL  /* connect retry after EAGAIN (unix backlog full) */
#define NS          1000000000ULL
#define UDP_LOSS_NS 250000000ULL /* an unanswered datagram this old is lost */

enum conn_state {
	CONN_NEW,
	CONN_RETRY,      /* connect said EAGAIN: try again */
	CONN_CONNECTING, /* waiting for the connect to complete */
	CONN_PROBING,    /* idle: waiting for the echo of its first byte */
	CONN_RUNNING,
	CONN_SHUTDOWN, /* SHUT_WR sent, waiting for the server's EOF */
	CONN_DONE,
	CONN_FAILED,
};

struct rbb_conn {
	int fd;
	unsigned index;  /* global connection number, used in messages */
	unsigned act_ix; /* position in the worker's act[] (open loop slots) */
	enum conn_state state;
	bool active;
	struct rbb_verifier v; /* v.off = bytes echoed and verified */
	uint64_t sent;         /* bytes handed to the kernel */
	uint64_t issued;       /* messages started (time stamped) */
	uint64_t done;         /* messages fully echoed */
	uint64_t quota;        /* messages to send; UINT64_MAX with -d */
	uint64_t last_progress;
	uint64_t loss_since; /* udp: first loss since the last echo, 0 if none */
	/*
	 * udp: bit k % win is set while datagram k is sent and not back. A
	 * datagram overtaken by a later one (a hole) is counted lost until it
	 * turns up; those below gaveup_below were given up by the loss timeout.
	 */
	uint64_t *out_bits;
	uint64_t holes;
	uint64_t gaveup_below;
	/* --crr: this slot's transactions started, and the current one's times. */
	uint64_t txn;
	uint64_t txn_start;
	bool restart;   /* closed in this epoll batch: reconnect after it */
	uint64_t *ts;   /* send (or intended send) time of in-flight messages */
	uint64_t acked; /* --expect none: bytes of ours the server's TCP acknowledged */
	/*
	 * --expect none/chargen: the last send or recv loop stopped at its
	 * budget, not at EAGAIN, so no new edge will come: go on after the
	 * next epoll batch (with the EOF/error edge it carried, if any).
	 */
	bool more;
	bool more_hup;
};

/*
 * Send or recv calls one connection gets per turn in the one-way loops.
 * A server on the other core can keep a socket from ever saying EAGAIN;
 * without a bound one connection would starve the others and the
 * window's edges (a 0.3 s window read as empty once, under load).
 */
#define ONEWAY_BUDGET 32

uint64_t rbb_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

void rbb_error(struct rbb_run *run, bool fatal, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&run->err_lock);
	if (run->n_errors < RBB_MAX_ERRORS) {
		va_start(ap, fmt);
		vsnprintf(run->errors[run->n_errors], RBB_ERR_LEN, fmt, ap);
		va_end(ap);
	}
	run->n_errors++;
	pthread_mutex_unlock(&run->err_lock);
	if (fatal)
		atomic_store(&run->stop, 1);
}

int rbb_worker_init(struct rbb_worker *w, struct rbb_run *run, unsigned id)
{
	const struct rbb_opts *o = run->o;
	unsigned n = 0, i;
	int rc;

	memset(w, 0, sizeof(*w));
	pthread_mutex_init(&w->tcpi_lock, NULL);
	w->run = run;
	w->id = id;
	w->epfd = -1;
	w->last_j = -1;
	for (i = id; i < o->connections; i += run->n_workers)
		n++;
	w->n_conns = n;
	w->conns = calloc(n ? n : 1, sizeof(*w->conns));
	w->act = calloc(n ? n : 1, sizeof(*w->act));
	w->ts = calloc((size_t)(n ? n : 1) * o->depth, sizeof(*w->ts));
	if (o->target.proto == RBB_PROTO_UDP) {
		/* Wide enough for every datagram in flight and a generous reordering. */
		w->win = (64 + 4 * o->depth + 63) / 64 * 64;
		w->bits = calloc((size_t)(n ? n : 1) * (w->win / 64), sizeof(*w->bits));
		if (!w->bits)
			return -ENOMEM;
	}
	w->rbuf = malloc(RBUF_SIZE);
	if (o->expect == RBB_EXPECT_CHARGEN)
		rbb_chargen_prepare(); /* before the clock starts */
	if (!w->conns || !w->act || !w->ts || !w->rbuf)
		return -ENOMEM;
	rc = rbb_hist_create(&w->hist);
	if (rc < 0)
		return rc;
	rc = rbb_hist_create(&w->conn_hist);
	if (rc < 0)
		return rc;
	w->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (w->epfd < 0)
		return -errno;
	for (i = 0; i < n; i++) {
		struct rbb_conn *c = &w->conns[i];

		c->fd = -1;
		c->index = id + i * run->n_workers;
		c->active = c->index < o->active;
		c->ts = w->ts + (size_t)i * o->depth;
		if (w->bits)
			c->out_bits = w->bits + (size_t)i * (w->win / 64);
		c->quota = UINT64_MAX;
		rbb_verifier_init(&c->v, rbb_stream_seed(o->seed, c->index));
	}
	return 0;
}

void rbb_worker_fini(struct rbb_worker *w)
{
	for (unsigned i = 0; w->conns && i < w->n_conns; i++)
		if (w->conns[i].fd >= 0)
			close(w->conns[i].fd);
	if (w->epfd >= 0)
		close(w->epfd);
	rbb_hist_destroy(w->hist);
	rbb_hist_destroy(w->conn_hist);
	pthread_mutex_destroy(&w->tcpi_lock);
	free(w->conns);
	free(w->act);
	free(w->ts);
	free(w->bits);
	free(w->rbuf);
}

void rbb_tcpagg_merge(struct rbb_tcpagg *a, const struct rbb_tcpagg *b)
{
	if (!b->n)
		return;
	if (!a->n || b->rtt_min < a->rtt_min)
		a->rtt_min = b->rtt_min;
	if (!a->n || b->cwnd_min < a->cwnd_min)
		a->cwnd_min = b->cwnd_min;
	if (b->rtt_max > a->rtt_max)
		a->rtt_max = b->rtt_max;
	if (b->cwnd_max > a->cwnd_max)
		a->cwnd_max = b->cwnd_max;
	a->n += b->n;
	a->retrans += b->retrans;
	a->rtt_sum += b->rtt_sum;
	a->rttvar_sum += b->rttvar_sum;
	a->cwnd_sum += b->cwnd_sum;
}

/* Adds connection @c's TCP_INFO to @agg (nothing when the kernel says no). */
static void tcpi_sample(const struct rbb_conn *c, struct rbb_tcpagg *agg)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	struct rbb_tcpagg one = {0};

	memset(&ti, 0, sizeof(ti));
	if (c->fd < 0 || getsockopt(c->fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
		return;
	one.n = 1;
	one.retrans = ti.tcpi_total_retrans;
	one.rtt_min = one.rtt_max = ti.tcpi_rtt;
	one.cwnd_min = one.cwnd_max = ti.tcpi_snd_cwnd;
	one.rtt_sum = ti.tcpi_rtt;
	one.rttvar_sum = ti.tcpi_rttvar;
	one.cwnd_sum = ti.tcpi_snd_cwnd;
	rbb_tcpagg_merge(agg, &one);
}

/* --tcp-info --interval: a fresh sample of every open connection, for the main thread. */
static void tcpi_interval(struct rbb_worker *w)
{
	struct rbb_tcpagg agg = {0};

	for (unsigned i = 0; i < w->n_conns; i++)
		if (w->conns[i].state == CONN_RUNNING || w->conns[i].state == CONN_SHUTDOWN)
			tcpi_sample(&w->conns[i], &agg);
	pthread_mutex_lock(&w->tcpi_lock);
	w->tcpi_iv = agg;
	pthread_mutex_unlock(&w->tcpi_lock);
}

static void conn_close(struct rbb_worker *w, struct rbb_conn *c, enum conn_state state)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	if (c->state == CONN_RUNNING || c->state == CONN_SHUTDOWN)
		w->left--;
	c->state = state;
}

static void conn_fail(struct rbb_worker *w, struct rbb_conn *c)
{
	conn_close(w, c, CONN_FAILED);
	atomic_store(&w->run->stop, 1);
}

/* ---- connecting ---------------------------------------------------- */

static void connect_failed(struct rbb_worker *w, struct rbb_conn *c, int err)
{
	/* Connect errors are counted and reported, but do not fail the run. */
	if (!w->connect_errors)
		rbb_error(w->run, false, "connection %u: connect to %s: %s", c->index,
		          w->run->o->url, strerror(err));
	w->connect_errors++;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->state = CONN_FAILED;
}

static void connect_start(struct rbb_worker *w, struct rbb_conn *c)
{
	const struct rbb_target *t = &w->run->o->target;
	struct epoll_event ev = {0};
	int one = 1;

	if (c->fd < 0) {
		int type = t->proto == RBB_PROTO_UDP ? SOCK_DGRAM : SOCK_STREAM;

		c->fd = socket(t->addr.ss_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (c->fd < 0) {
			connect_failed(w, c, errno);
			return;
		}
		if (t->proto == RBB_PROTO_TCP)
			setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	if (connect(c->fd, (const struct sockaddr *)&t->addr, t->addrlen) < 0) {
		if (errno == EAGAIN) {
			/* A full unix listen backlog: retry shortly. */
			c->state = CONN_RETRY;
			return;
		}
		if (errno != EINPROGRESS && errno != EINTR) {
			connect_failed(w, c, errno);
			return;
		}
	}
	/* Registered once, edge-triggered, for the whole life of the connection. */
	ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
	ev.data.ptr = c;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
		connect_failed(w, c, errno);
		return;
	}
	c->state = CONN_CONNECTING;
}

static void unserved(struct rbb_worker *w, struct rbb_conn *c, const char *why)
{
	if (!w->unserved)
		rbb_error(w->run, false, "connection %u: idle connection not served: %s", c->index,
		          why);
	w->unserved++;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->state = CONN_FAILED;
}

/* Reads the echo of an idle connection's first byte; anything else ends it. */
static void probe_read(struct rbb_worker *w, struct rbb_conn *c)
{
	char why[160];

	for (;;) {
		ssize_t r = recv(c->fd, w->rbuf, RBUF_SIZE, 0);
		int rc;

		if (r > 0) {
			rc = rbb_verifier_feed(&c->v, w->rbuf, (size_t)r);
			if (rc == -EBADMSG) {
				rbb_error(w->run, true,
				          "connection %u: byte mismatch at offset 0: expected "
				          "0x%02x, got 0x%02x (the first byte came back different: "
				          "is this an echo server?)",
				          c->index, c->v.expected, c->v.got);
				conn_fail(w, c);
				return;
			}
			if (rc == -EOVERFLOW) {
				rbb_error(w->run, true,
				          "connection %u: extra bytes: %zd bytes came back for the "
				          "1 sent (is this an echo server?)",
				          c->index, r);
				conn_fail(w, c);
				return;
			}
			if (c->state == CONN_PROBING) {
				c->state = CONN_RUNNING;
				w->connected++;
			}
			continue; /* an EOF right behind the echo must be seen now */
		}
		if (r == 0) {
			if (c->state == CONN_RUNNING) {
				/* Echoed, then closed: the traffic phase never gets another edge.
				 */
				w->connected--;
				unserved(w, c, "closed by the server right after its first echo");
			} else {
				unserved(w, c,
				         "closed by the server before it echoed its first byte");
			}
			return;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			return;
		snprintf(why, sizeof(why), "%s before it echoed its first byte", strerror(errno));
		if (c->state == CONN_RUNNING)
			w->connected--;
		unserved(w, c, why);
		return;
	}
}

static void probe_start(struct rbb_worker *w, struct rbb_conn *c)
{
	char why[160];
	uint8_t b;

	rbb_stream_fill(c->v.seed, 0, &b, 1);
	if (send(c->fd, &b, 1, MSG_NOSIGNAL) != 1) {
		snprintf(why, sizeof(why), "sending its first byte: %s", strerror(errno));
		unserved(w, c, why);
		return;
	}
	c->sent = c->v.sent = 1;
	c->state = CONN_PROBING;
	probe_read(w, c);
}

static void connect_check(struct rbb_worker *w, struct rbb_conn *c)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err) {
		connect_failed(w, c, err);
		return;
	}
	/*
	 * An idle connection proves it is served: one byte (byte 0 of its
	 * stream) must come back before it counts as connected. A completed
	 * handshake alone may mean a connection left in the accept backlog,
	 * or one the server closes at once.
	 */
	if (!c->active && w->run->o->target.proto != RBB_PROTO_UDP) {
		probe_start(w, c);
		return;
	}
	c->state = CONN_RUNNING;
	w->connected++;
}

static void connect_all(struct rbb_worker *w)
{
	const struct rbb_opts *o = w->run->o;
	uint64_t deadline = rbb_now() + (uint64_t)(fmax(o->stall_timeout, 1.0) * 1e9);
	struct epoll_event evs[MAX_EVENTS];
	unsigned pending = 0;

	for (unsigned i = 0; i < w->n_conns; i++)
		connect_start(w, &w->conns[i]);
	for (;;) {
		bool retry = false;
		uint64_t now = rbb_now();
		int n, timeout;

		pending = 0;
		for (unsigned i = 0; i < w->n_conns; i++) {
			struct rbb_conn *c = &w->conns[i];

			if (c->state == CONN_RETRY) {
				connect_start(w, c);
				retry |= c->state == CONN_RETRY;
			}
			pending += c->state == CONN_CONNECTING || c->state == CONN_RETRY ||
			           c->state == CONN_PROBING;
		}
		if (!pending || atomic_load(&w->run->stop))
			break;
		if (now >= deadline) {
			for (unsigned i = 0; i < w->n_conns; i++) {
				struct rbb_conn *c = &w->conns[i];

				if (c->state == CONN_CONNECTING || c->state == CONN_RETRY) {
					connect_failed(w, c, ETIMEDOUT);
				} else if (c->state == CONN_PROBING) {
					char why[96];

					snprintf(why, sizeof(why),
					         "no echo of its first byte within %.1f s",
					         fmax(o->stall_timeout, 1.0));
					unserved(w, c, why);
				}
			}
			break;
		}
		timeout = (int)((fmin(deadline - now, retry ? RETRY_NS : TICK_NS) + 999999) /
		                1000000);
		n = epoll_wait(w->epfd, evs, MAX_EVENTS, timeout);
		for (int i = 0; i < n; i++) {
			struct rbb_conn *c = evs[i].data.ptr;

			if (c->state == CONN_CONNECTING)
				connect_check(w, c);
			else if (c->state == CONN_PROBING ||
			         (c->state == CONN_RUNNING && !c->active))
				probe_read(w, c);
		}
	}
}

/* ---- traffic ------------------------------------------------------- */

static bool is_udp(const struct rbb_worker *w)
{
	return w->run->o->target.proto == RBB_PROTO_UDP;
}

static bool open_loop(const struct rbb_worker *w)
{
	return w->run->o->rate > 0;
}

/* Intended send time of message @k of connection @c (open loop). */
static uint64_t intended(const struct rbb_worker *w, const struct rbb_conn *c, uint64_t k)
{
	double slot = (double)k * w->n_act + c->act_ix;

	return w->run->t_start + (uint64_t)(slot * w->period);
}

/* Messages of @c due by @now (open loop). */
static uint64_t due(const struct rbb_worker *w, const struct rbb_conn *c, uint64_t now)
{
	double x;

	if (now < w->run->t_start)
		return 0;
	x = (double)(now - w->run->t_start) / w->period;
	if (x < c->act_ix)
		return 0;
	return (uint64_t)floor((x - c->act_ix) / w->n_act) + 1;
}

static bool udp_outstanding(const struct rbb_worker *w, const struct rbb_conn *c, uint64_t k)
{
	uint64_t slot = k % w->win;

	return c->out_bits[slot / 64] >> (slot % 64) & 1;
}

static void udp_set_outstanding(struct rbb_worker *w, struct rbb_conn *c, uint64_t k, bool on)
{
	uint64_t slot = k % w->win, bit = 1ULL << (slot % 64);

	if (on)
		c->out_bits[slot / 64] |= bit;
	else
		c->out_bits[slot / 64] &= ~bit;
}

/* Datagram @k is on its way; its slot's previous owner, k - win, is lost for good. */
static void udp_mark_sent(struct rbb_worker *w, struct rbb_conn *c, uint64_t k)
{
	if (k >= w->win && udp_outstanding(w, c, k) && k - w->win >= c->gaveup_below && c->holes)
		c->holes--;
	udp_set_outstanding(w, c, k, true);
}

static void conn_flush(struct rbb_worker *w, struct rbb_conn *c)
{
	uint64_t target = c->issued * w->run->o->size;

	while (c->sent < target) {
		size_t n = target - c->sent > SBUF_SIZE ? SBUF_SIZE : (size_t)(target - c->sent);
		ssize_t r;

		/* UDP: exactly one message per datagram (size <= RBB_MAX_DATAGRAM < SBUF_SIZE). */
		if (is_udp(w))
			n = w->run->o->size;
		/* Straight from the stream's pattern: nothing to generate or copy. */
		r = send(c->fd, rbb_stream_window(c->v.seed, c->sent, n), n, MSG_NOSIGNAL);
		if (r > 0 && is_udp(w))
			udp_mark_sent(w, c, c->sent / n);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return;
			rbb_error(w->run, true, "connection %u: send at offset %llu: %s", c->index,
			          (unsigned long long)c->sent, strerror(errno));
			conn_fail(w, c);
			return;
		}
		c->sent += (uint64_t)r;
		c->v.sent = c->sent;
	}
}

/* Starts as many messages as the depth, the quota and (open loop) the schedule allow. */
static void conn_issue(struct rbb_worker *w, struct rbb_conn *c, uint64_t now)
{
	const struct rbb_opts *o = w->run->o;
	uint64_t limit = c->quota;

	if (!c->active || c->state != CONN_RUNNING || w->ending)
		return;
	if (open_loop(w)) {
		uint64_t d = due(w, c, now);

		if (d < limit)
			limit = d;
	}
	while (c->issued < limit && c->issued - c->done < o->depth) {
		if (c->issued == c->done)
			c->last_progress = now; /* the stall clock starts now */
		c->ts[c->issued % o->depth] = open_loop(w) ? intended(w, c, c->issued) : now;
		c->issued++;
	}
	conn_flush(w, c);
}

static void finish_all(struct rbb_worker *w, uint64_t now);

static void conn_shutdown(struct rbb_worker *w, struct rbb_conn *c, uint64_t now)
{
	/* A datagram socket has no EOF to wait for: everything came back, so it is done. */
	if (is_udp(w)) {
		conn_close(w, c, CONN_DONE);
	} else {
		if (w->run->o->tcp_info)
			tcpi_sample(c, &w->tcpi);
		shutdown(c->fd, SHUT_WR);
		c->state = CONN_SHUTDOWN;
		c->last_progress = now;
	}
	/* With -n, idle connections end when the last active one does. */
	if (c->active && !--w->act_left && !w->ending) {
		w->ending = true;
		finish_all(w, now);
	}
}

/* Half-closes once everything sent has come back and nothing more will be sent. */
static void conn_maybe_finish(struct rbb_worker *w, struct rbb_conn *c, uint64_t now)
{
	bool sending_over;

	if (c->state != CONN_RUNNING)
		return;
	sending_over = w->ending || (c->active && c->issued >= c->quota);
	if (!sending_over)
		return;
	/* udp: a hole may still turn up (reordered); the loss timeout ends the wait. */
	/* An idle connection's only byte is its probe (sent == 1, issued == 0). */
	if ((!c->active || c->sent == c->issued * w->run->o->size) && c->v.off == c->sent &&
	    !c->holes)
		conn_shutdown(w, c, now);
}

static void finish_all(struct rbb_worker *w, uint64_t now)
{
	for (unsigned i = 0; i < w->n_conns; i++)
		conn_maybe_finish(w, &w->conns[i], now);
}

static bool measuring(const struct rbb_worker *w, uint64_t now)
{
	const struct rbb_run *run = w->run;

	if (run->o->messages)
		return true;
	return now >= run->t_measure && now < run->t_end;
}

static void conn_completed(struct rbb_worker *w, struct rbb_conn *c, uint64_t now, size_t len)
{
	const struct rbb_opts *o = w->run->o;
	uint64_t upto = c->v.off / o->size;
	bool in_window = measuring(w, now);
	uint64_t n = upto - c->done;

	if (in_window)
		w->bytes += len;
	w->verified += len;
	while (c->done < upto) {
		uint64_t t = c->ts[c->done % o->depth];

		if (in_window)
			rbb_hist_record(w->hist, now > t ? now - t : 0);
		c->done++;
	}
	if (n) {
		if (in_window)
			w->msgs += n;
		w->last_done = now;
		atomic_fetch_add_explicit(&w->prog_msgs, n, memory_order_relaxed);
	}
	atomic_fetch_add_explicit(&w->prog_bytes, len, memory_order_relaxed);
}

/*
 * Which datagram a received one is. UDP may lose, reorder and (on a busy
 * machine, past our loss timeout) delay datagrams. The next one expected is
 * tried first, then the later ones in flight (the ones they overtook become
 * holes, counted lost until they turn up), then earlier ones still in the
 * window: an earlier one that is outstanding is reordered (or late, if the
 * loss timeout gave up on it), one that already came back is a duplicate.
 * Returns 0 to verify it as the next message, 1 when it was counted and is
 * done with, or -EBADMSG after recording the error.
 */
static int udp_classify(struct rbb_worker *w, struct rbb_conn *c, size_t len)
{
	const size_t size = w->run->o->size;
	const uint64_t next = c->v.off / size, sent_msgs = c->sent / size;
	const uint64_t low = sent_msgs > w->win ? sent_msgs - w->win : 0;
	size_t bad;

	if (next < sent_msgs) {
		bad = rbb_stream_check(c->v.seed, next * size, w->rbuf, len);
		if (bad == len)
			return 0;
	} else {
		bad = len;
	}
	for (uint64_t k = next + 1; k < sent_msgs; k++) {
		if (rbb_stream_check(c->v.seed, k * size, w->rbuf, len) == len) {
			w->lost += k - next;
			c->holes += k - next;
			c->done = k;
			c->v.off = k * size;
			return 0;
		}
	}
	for (uint64_t k = next < sent_msgs ? next : sent_msgs; k-- > low;) {
		if (rbb_stream_check(c->v.seed, k * size, w->rbuf, len) != len)
			continue;
		if (!udp_outstanding(w, c, k)) {
			rbb_error(w->run, true,
			          "connection %u: duplicate udp datagram %llu (offset %llu): it "
			          "came back before",
			          c->index, (unsigned long long)k, (unsigned long long)(k * size));
			return -EBADMSG;
		}
		udp_set_outstanding(w, c, k, false);
		w->lost--;
		if (k < c->gaveup_below) {
			w->late++;
		} else {
			w->reordered++;
			c->holes--;
		}
		w->verified += len;
		atomic_fetch_add_explicit(&w->prog_bytes, len, memory_order_relaxed);
		return 1;
	}
	if (bad < len)
		rbb_error(w->run, true,
		          "connection %u: byte mismatch at offset %llu (udp datagram %llu, byte "
		          "%zu): expected 0x%02x, got 0x%02x%s",
		          c->index, (unsigned long long)(next * size + bad),
		          (unsigned long long)next, bad,
		          rbb_stream_byte(c->v.seed, next * size + bad), w->rbuf[bad],
		          c->v.off == 0 && w->verified == 0
		                  ? " (the first byte came back different: is this an echo server?)"
		                  : "");
	else
		rbb_error(w->run, true,
		          "connection %u: extra udp datagram: nothing is in flight after %llu "
		          "datagrams, and it matches none of the last %llu",
		          c->index, (unsigned long long)sent_msgs,
		          (unsigned long long)(sent_msgs - low));
	return -EBADMSG;
}

/* Gives up on datagrams unanswered for UDP_LOSS_NS; fails after stall_timeout without echoes. */
static void udp_loss_check(struct rbb_worker *w, struct rbb_conn *c, uint64_t now)
{
	const size_t size = w->run->o->size;
	uint64_t sent_msgs = c->sent / size;

	if (now - c->last_progress < UDP_LOSS_NS || (c->done >= sent_msgs && !c->holes))
		return;
	if (c->done < sent_msgs && !c->loss_since)
		c->loss_since = c->last_progress;
	if (c->loss_since && now - c->loss_since >= (uint64_t)(w->run->o->stall_timeout * 1e9)) {
		rbb_error(w->run, true,
		          "connection %u: stall: no udp datagram echoed for %.1f s at offset %llu "
		          "(%llu datagrams lost in all)",
		          c->index, (double)(now - c->loss_since) / 1e9,
		          (unsigned long long)c->v.off,
		          (unsigned long long)(w->lost + sent_msgs - c->done));
		conn_fail(w, c);
		return;
	}
	w->lost += sent_msgs - c->done;
	c->done = sent_msgs;
	c->v.off = c->sent;
	c->holes = 0;
	c->gaveup_below = sent_msgs;
	c->last_progress = now;
	conn_issue(w, c, now);
	conn_maybe_finish(w, c, now);
}

static void udp_read(struct rbb_worker *w, struct rbb_conn *c, uint64_t now)
{
	const size_t size = w->run->o->size;

	for (;;) {
		ssize_t r = recv(c->fd, w->rbuf, RBUF_SIZE, 0);
		int rc;

		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			rbb_error(w->run, true, "connection %u: recv after %llu of %llu bytes: %s",
			          c->index, (unsigned long long)c->v.off,
			          (unsigned long long)c->sent, strerror(errno));
			conn_fail(w, c);
			return;
		}
		if ((size_t)r != size) {
			rbb_error(w->run, true,
			          "connection %u: udp datagram %llu (offset %llu) has %zd bytes, "
			          "sent %zu",
			          c->index, (unsigned long long)(c->v.off / size),
			          (unsigned long long)c->v.off, r, size);
			conn_fail(w, c);
			return;
		}
		rc = udp_classify(w, c, (size_t)r);
		if (rc < 0) {
			conn_fail(w, c);
			return;
		}
		if (rc > 0)
			continue;
		udp_set_outstanding(w, c, c->v.off / size, false);
		c->v.off += size;
		c->last_progress = now;
		c->loss_since = 0;
		conn_completed(w, c, now, (size_t)r);
	}
	conn_issue(w, c, now);
	conn_maybe_finish(w, c, now);
}

static void conn_read(struct rbb_worker *w, struct rbb_conn *c, uint64_t now)
{
	if (is_udp(w)) {
		udp_read(w, c, now);
		return;
	}
	for (;;) {
		ssize_t r = recv(c->fd, w->rbuf, RBUF_SIZE, 0);
		int rc;

		if (r > 0) {
			rc = rbb_verifier_feed(&c->v, w->rbuf, (size_t)r);
			if (rc == -EBADMSG) {
				rbb_error(w->run, true,
				          "connection %u: byte mismatch at offset %llu: expected "
				          "0x%02x, got 0x%02x%s",
				          c->index, (unsigned long long)c->v.bad_off, c->v.expected,
				          c->v.got,
				          c->v.bad_off == 0 ? " (the first byte came back "
				                              "different: is this an echo server?)"
				                            : "");
				conn_fail(w, c);
				return;
			}
			if (rc == -EOVERFLOW) {
				rbb_error(w->run, true,
				          "connection %u: extra bytes: got byte 0x%02x at offset "
				          "%llu, but only %llu bytes were sent",
				          c->index, c->v.got, (unsigned long long)c->v.bad_off,
				          (unsigned long long)c->sent);
				conn_fail(w, c);
				return;
			}
			c->last_progress = now;
			conn_completed(w, c, now, (size_t)r);
			if ((size_t)r < RBUF_SIZE)
				break; /* a short read drains a stream socket */
			continue;
		}
		if (r == 0) {
			if (c->state == CONN_SHUTDOWN && c->v.off == c->sent) {
				conn_close(w, c, CONN_DONE);
				return;
			}
			if (!c->active)
				rbb_error(w->run, true,
				          "connection %u: the server closed this idle connection "
				          "before the client did",
				          c->index);
			else if (c->v.off < c->sent)
				rbb_error(w->run, true,
				          "connection %u: short stream: server closed after %llu "
				          "of %llu bytes",
				          c->index, (unsigned long long)c->v.off,
				          (unsigned long long)c->sent);
			else
				rbb_error(w->run, true,
				          "connection %u: server closed the connection at offset "
				          "%llu before the client did",
				          c->index, (unsigned long long)c->v.off);
			conn_fail(w, c);
			return;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			break;
		if (!c->active)
			rbb_error(w->run, true, "connection %u: idle connection: %s", c->index,
			          strerror(errno));
		else
			rbb_error(w->run, true, "connection %u: recv after %llu of %llu bytes: %s",
			          c->index, (unsigned long long)c->v.off,
			          (unsigned long long)c->sent, strerror(errno));
		conn_fail(w, c);
		return;
	}
	if (c->state == CONN_RUNNING) {
		conn_issue(w, c, now);
		conn_maybe_finish(w, c, now);
	}
}

static void stall_check(struct rbb_worker *w, uint64_t now)
{
	uint64_t limit = (uint64_t)(w->run->o->stall_timeout * 1e9);

	for (unsigned i = 0; i < w->n_conns; i++) {
		struct rbb_conn *c = &w->conns[i];
		bool waiting;

		if (c->state != CONN_RUNNING && c->state != CONN_SHUTDOWN)
			continue;
		if (is_udp(w)) {
			udp_loss_check(w, c, now);
			continue;
		}
		waiting = c->state == CONN_SHUTDOWN || c->v.off < c->issued * w->run->o->size;
		if (!waiting || now - c->last_progress < limit)
			continue;
		if (c->state == CONN_SHUTDOWN)
			rbb_error(w->run, true,
			          "connection %u: stall: no EOF from the server %.1f s after "
			          "shutdown at offset %llu",
			          c->index, (double)(now - c->last_progress) / 1e9,
			          (unsigned long long)c->v.off);
		else
			rbb_error(w->run, true,
			          "connection %u: stall: no progress for %.1f s at offset %llu "
			          "(%llu bytes sent, %llu echoed)",
			          c->index, (double)(now - c->last_progress) / 1e9,
			          (unsigned long long)c->v.off, (unsigned long long)c->sent,
			          (unsigned long long)c->v.off);
		conn_fail(w, c);
	}
}

/* Open loop: visit the connections whose send slots came due since the last call. */
static void schedule(struct rbb_worker *w, uint64_t now)
{
	int64_t j;

	if (!open_loop(w) || !w->n_act || w->ending || now < w->run->t_start)
		return;
	j = (int64_t)((double)(now - w->run->t_start) / w->period);
	if (j - w->last_j >= (int64_t)w->n_act) {
		for (unsigned i = 0; i < w->n_act; i++)
			conn_issue(w, w->act[i], now);
	} else {
		for (int64_t k = w->last_j + 1; k <= j; k++)
			conn_issue(w, w->act[k % w->n_act], now);
	}
	w->last_j = j;
}

static uint64_t next_slot(const struct rbb_worker *w)
{
	return w->run->t_start + (uint64_t)((double)(w->last_j + 1) * w->period);
}

/*
 * epoll_wait with a nanosecond timeout: open-loop sends are scheduled far
 * more finely than epoll_wait's milliseconds. Falls back on old kernels.
 */
static int wait_events(struct rbb_worker *w, struct epoll_event *evs, uint64_t timeout_ns)
{
	static atomic_int no_pwait2;
	struct timespec ts = {
	        .tv_sec = (time_t)(timeout_ns / NS),
	        .tv_nsec = (long)(timeout_ns % NS),
	};
	int n;

	if (!atomic_load_explicit(&no_pwait2, memory_order_relaxed)) {
		n = epoll_pwait2(w->epfd, evs, MAX_EVENTS, &ts, NULL);
		if (n >= 0 || errno != ENOSYS)
			return n;
		atomic_store(&no_pwait2, 1);
	}
	return epoll_wait(w->epfd, evs, MAX_EVENTS, (int)((timeout_ns + 999999) / 1000000));
}

static void traffic(struct rbb_worker *w)
{
	struct rbb_run *run = w->run;
	const struct rbb_opts *o = run->o;
	struct epoll_event evs[MAX_EVENTS];
	uint64_t now = rbb_now(), next_sweep = now + TICK_NS;
	uint64_t per_conn = 0, extra = 0;
	uint64_t iv = o->tcp_info ? (uint64_t)(o->interval * 1e9) : 0;
	uint64_t next_iv = iv ? run->t_start + iv : UINT64_MAX;

	/* Split this worker's quota (-n) and rate over its connected active connections. */
	if (w->n_act) {
		per_conn = w->quota / w->n_act;
		extra = w->quota % w->n_act;
	}
	for (unsigned i = 0; i < w->n_act; i++) {
		struct rbb_conn *c = w->act[i];

		if (o->messages)
			c->quota = per_conn + (i < extra);
	}
	w->act_left = w->n_act;
	if (!w->n_act && o->messages)
		w->ending = true;
	for (unsigned i = 0; i < w->n_act; i++) {
		conn_issue(w, w->act[i], now);
		conn_maybe_finish(w, w->act[i], now);
	}
	if (w->ending)
		finish_all(w, now);

	while (w->left && !atomic_load(&run->stop)) {
		uint64_t wake = next_sweep;
		int n;

		if (!w->ending && run->t_end < wake)
			wake = run->t_end;
		if (next_iv < wake)
			wake = next_iv;
		if (open_loop(w) && !w->ending && w->n_act && next_slot(w) < wake)
			wake = next_slot(w);
		now = rbb_now();
		n = wait_events(w, evs, wake > now ? wake - now : 0);
		if (n < 0 && errno != EINTR) {
			rbb_error(run, true, "epoll_wait: %s", strerror(errno));
			break;
		}
		now = rbb_now();
		for (int i = 0; i < n; i++) {
			struct rbb_conn *c = evs[i].data.ptr;

			/* Closed earlier in this batch: the event is stale. */
			if (c->state != CONN_RUNNING && c->state != CONN_SHUTDOWN)
				continue;
			if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
				conn_read(w, c, now);
			if (c->state == CONN_RUNNING && (evs[i].events & EPOLLOUT)) {
				conn_flush(w, c);
				if (c->state == CONN_RUNNING)
					conn_maybe_finish(w, c, now);
			}
		}
		schedule(w, now);
		if (!w->ending && now >= run->t_end) {
			if (o->messages) {
				rbb_error(run, true,
				          "time limit of %.1f s reached before %llu messages were "
				          "echoed",
				          o->duration, (unsigned long long)o->messages);
				break;
			}
			w->ending = true;
			finish_all(w, now);
		}
		if (now >= next_sweep) {
			stall_check(w, now);
			next_sweep = now + TICK_NS;
		}
		if (now >= next_iv) {
			/* Just before the main thread's progress line at the same instant. */
			tcpi_interval(w);
			next_iv += iv;
		}
	}
}

/* ---- one-way streams: --expect none (discard) and --expect chargen ------ */

static bool one_way(const struct rbb_worker *w)
{
	return w->run->o->expect != RBB_EXPECT_ECHO;
}

/* Bytes connection @c sends (none) or receives (chargen): its -n quota, or no limit. */
static uint64_t oneway_limit(const struct rbb_worker *w, const struct rbb_conn *c)
{
	size_t size = w->run->o->size;

	return c->quota > UINT64_MAX / size ? UINT64_MAX : c->quota * size;
}

/*
 * --expect none: how many of @c's bytes the server's TCP has acknowledged.
 *
 * SIOCOUTQ on a TCP socket is write_seq - snd_una: the bytes handed to the
 * kernel that the peer has not acknowledged yet (in flight or not sent),
 * plus 1 for our FIN from the shutdown() that queues it until the ACK that
 * covers it. With sent, the bytes send() accepted, the acknowledged data
 * is exactly sent - outq (sent + 1 - outq once the FIN is queued and
 * outq > 0): no estimate, no sampling error, one counter read without
 * the socket lock. (TCP_INFO's tcpi_bytes_acked is the same count plus 1
 * for the SYN and 1 for the FIN.) An acknowledgement means the bytes
 * reached the server's receive queue, not that the server read them: in a
 * window that is a bias of at most one receive buffer, and at the end the
 * server's FIN after ours proves it read everything (a TCP that closes
 * with unread bytes sends an RST, which fails the run).
 *
 * AF_UNIX has no acknowledgements (its SIOCOUTQ counts buffer memory, not
 * bytes), so over unix: the count is what send() accepted, at most one
 * socket buffer ahead of the server's reads; the end is checked the same
 * way (a unix peer that closes with unread bytes gives us ECONNRESET).
 */
static void none_refresh(struct rbb_worker *w, struct rbb_conn *c, uint64_t now)
{
	uint64_t acked = c->sent;
	int outq = 0;

	if (c->fd >= 0 && w->run->o->target.proto == RBB_PROTO_TCP &&
	    ioctl(c->fd, SIOCOUTQ, &outq) == 0 && outq > 0) {
		uint64_t q = (uint64_t)outq;

		if (c->state == CONN_SHUTDOWN)
			q--; /* our FIN, not yet acknowledged */
		acked = q < c->sent ? c->sent - q : 0;
	}
	if (acked <= c->acked)
		return;
	w->oneway_total += acked - c->acked;
	if (w->run->o->messages)
		w->bytes += acked - c->acked;
	atomic_fetch_add_explicit(&w->prog_bytes, acked - c->acked, memory_order_relaxed);
	c->acked = acked;
	c->last_progress = now;
	w->last_done = now;
}

static void oneway_refresh_all(struct rbb_worker *w, uint64_t now)
{
	if (w->run->o->expect != RBB_EXPECT_NONE)
		return;
	for (unsigned i = 0; i < w->n_conns; i++)
		if (w->conns[i].state == CONN_RUNNING || w->conns[i].state == CONN_SHUTDOWN)
			none_refresh(w, &w->conns[i], now);
}

/* --expect none: everything is sent; half-close and wait for the server's FIN. */
static void none_shutdown(struct rbb_worker *w, struct rbb_conn *c, uint64_t now)
{
	if (w->run->o->tcp_info)
		tcpi_sample(c, &w->tcpi);
	if (shutdown(c->fd, SHUT_WR) < 0) {
		rbb_error(w->run, true, "connection %u: shutdown after %llu bytes: %s", c->index,
		          (unsigned long long)c->sent, strerror(errno));
		conn_fail(w, c);
		return;
	}
	c->state = CONN_SHUTDOWN;
	c->last_progress = now;
	none_refresh(w, c, now);
}

/* --expect none: sends the connection's stream until EAGAIN, its quota or the end. */
static void none_send(struct rbb_worker *w, struct rbb_conn *c, uint64_t now)
{
	uint64_t limit = oneway_limit(w, c);
	unsigned budget = ONEWAY_BUDGET;

	c->more = false;
	while (!w->ending && c->sent < limit) {
		size_t n = w->run->o->size;
		ssize_t r;

		if (!budget--) {
			c->more = w->oneway_more = true;
			break;
		}

		if (n > RBB_STREAM_WINDOW)
			n = RBB_STREAM_WINDOW;
		if (limit - c->sent < n)
			n = (size_t)(limit - c->sent);
		r = send(c->fd, rbb_stream_window(c->v.seed, c->sent, n), n, MSG_NOSIGNAL);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			none_refresh(w, c, now);
			rbb_error(w->run, true,
			          "connection %u: send at offset %llu (%llu bytes acknowledged): "
			          "%s%s",
			          c->index, (unsigned long long)c->sent,
			          (unsigned long long)c->acked, strerror(errno),
			          errno == ECONNRESET || errno == EPIPE
			                  ? " (a server that closes with bytes unread resets the "
			                    "connection)"
			                  : "");
			conn_fail(w, c);
			return;
		}
		c->sent += (uint64_t)r;
	}
	none_refresh(w, c, now);
	if (w->ending || c->sent >= limit)
		none_shutdown(w, c, now);
}

/* --expect none: the server must send nothing, and close only after our FIN. */
static void none_read(struct rbb_worker *w, struct rbb_conn *c, uint64_t now)
{
	for (;;) {
		ssize_t r = recv(c->fd, w->rbuf, RBUF_SIZE, 0);

		if (r > 0) {
			none_refresh(w, c, now);
			rbb_error(
			        w->run, true,
			        "connection %u: the server sent %zd bytes after %llu of ours were "
			        "acknowledged (a discard server sends nothing)",
			        c->index, r, (unsigned long long)c->acked);
			conn_fail(w, c);
			return;
		}
		if (r == 0) {
			none_refresh(w, c, now);
			if (c->state != CONN_SHUTDOWN) {
				rbb_error(
				        w->run, true,
				        "connection %u: server closed the connection after %llu of "
				        "%llu bytes were acknowledged, before the client did",
				        c->index, (unsigned long long)c->acked,
				        (unsigned long long)c->sent);
				conn_fail(w, c);
				return;
			}
			if (c->acked != c->sent) {
				rbb_error(w->run, true,
				          "connection %u: short stream: server closed with %llu of "
				          "%llu bytes acknowledged",
				          c->index, (unsigned long long)c->acked,
				          (unsigned long long)c->sent);
				conn_fail(w, c);
				return;
			}
			w->verified += c->acked;
			conn_close(w, c, CONN_DONE);
			return;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			return;
		none_refresh(w, c, now);
		rbb_error(w->run, true,
		          "connection %u: recv after %llu of %llu bytes were acknowledged: %s%s",
		          c->index, (unsigned long long)c->acked, (unsigned long long)c->sent,
		          strerror(errno),
		          errno == ECONNRESET ? " (a server that closes with bytes unread resets "
		                                "the connection)"
		                              : "");
		conn_fail(w, c);
		return;
	}
}

/* --expect chargen: the client has what it wanted; closing with bytes unread resets. */
static void chargen_done(struct rbb_worker *w, struct rbb_conn *c)
{
	/* Silence is not a chargen stream, however short the run. */
	if (!c->v.off) {
		rbb_error(w->run, true,
		          "connection %u: no chargen byte arrived in %.1f s (is this a chargen "
		          "server?)",
		          c->index, (double)(rbb_now() - w->run->t_start) / 1e9);
		conn_fail(w, c);
		return;
	}
	if (w->run->o->tcp_info)
		tcpi_sample(c, &w->tcpi);
	conn_close(w, c, CONN_DONE);
}

/* --expect chargen: receives and checks the RFC 864 pattern from offset 0 (chargen.h). */
static void chargen_read(struct rbb_worker *w, struct rbb_conn *c, uint64_t now, bool hup)
{
	uint64_t limit = oneway_limit(w, c);
	size_t each = w->run->o->size < RBUF_SIZE ? w->run->o->size : RBUF_SIZE;
	unsigned budget = ONEWAY_BUDGET;

	c->more = false;
	while (c->v.off < limit) {
		size_t want = limit - c->v.off < each ? (size_t)(limit - c->v.off) : each;
		ssize_t r;

		if (!budget--) {
			c->more = w->oneway_more = true;
			c->more_hup = hup;
			break;
		}
		r = recv(c->fd, w->rbuf, want, 0);

		if (r > 0) {
			size_t bad = rbb_chargen_check(c->v.off, w->rbuf, (size_t)r);

			if (bad < (size_t)r) {
				uint64_t off = c->v.off + bad;
				char where[64];

				rbb_error(w->run, true,
				          "connection %u: chargen mismatch at offset %llu (%s): "
				          "expected 0x%02x, got 0x%02x%s",
				          c->index, (unsigned long long)off,
				          rbb_chargen_where(off, where, sizeof(where)),
				          rbb_chargen_byte(off), w->rbuf[bad],
				          off == 0 ? " (a chargen stream starts with ' ': is this "
				                     "a chargen server?)"
				                   : "");
				conn_fail(w, c);
				return;
			}
			c->v.off += (uint64_t)r;
			c->last_progress = now;
			w->verified += (uint64_t)r;
			w->oneway_total += (uint64_t)r;
			if (measuring(w, now))
				w->bytes += (uint64_t)r;
			w->last_done = now;
			atomic_fetch_add_explicit(&w->prog_bytes, (uint64_t)r,
			                          memory_order_relaxed);
			/*
			 * A short read drains a stream socket, unless the edge also
			 * carried the peer's EOF or an error: that edge comes once,
			 * so read on to the EOF now.
			 */
			if ((size_t)r < want && !hup)
				break;
			continue;
		}
		if (r == 0) {
			rbb_error(w->run, true,
			          "connection %u: server closed the chargen stream at offset %llu "
			          "(a chargen server sends until the client closes)",
			          c->index, (unsigned long long)c->v.off);
			conn_fail(w, c);
			return;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			break;
		rbb_error(w->run, true, "connection %u: recv at chargen offset %llu: %s", c->index,
		          (unsigned long long)c->v.off, strerror(errno));
		conn_fail(w, c);
		return;
	}
	if (c->v.off >= limit)
		chargen_done(w, c);
}

/* Past the end of sending (-d) or a fatal error elsewhere: wind every connection down. */
static void oneway_end(struct rbb_worker *w, uint64_t now)
{
	for (unsigned i = 0; i < w->n_conns; i++) {
		struct rbb_conn *c = &w->conns[i];

		if (c->state != CONN_RUNNING)
			continue;
		if (w->run->o->expect == RBB_EXPECT_NONE)
			none_shutdown(w, c, now);
		else
			chargen_done(w, c);
	}
}

static void oneway_stall_check(struct rbb_worker *w, uint64_t now)
{
	uint64_t limit = (uint64_t)(w->run->o->stall_timeout * 1e9);
	bool none = w->run->o->expect == RBB_EXPECT_NONE;

	oneway_refresh_all(w, now);
	for (unsigned i = 0; i < w->n_conns; i++) {
		struct rbb_conn *c = &w->conns[i];
		double idle = (double)(now - c->last_progress) / 1e9;

		if (c->state != CONN_RUNNING && c->state != CONN_SHUTDOWN)
			continue;
		if (now - c->last_progress < limit)
			continue;
		if (c->state == CONN_SHUTDOWN)
			rbb_error(w->run, true,
			          "connection %u: stall: no EOF from the server %.1f s after "
			          "shutdown at offset %llu (%llu bytes acknowledged)",
			          c->index, idle, (unsigned long long)c->sent,
			          (unsigned long long)c->acked);
		else if (none)
			rbb_error(w->run, true,
			          "connection %u: stall: nothing acknowledged for %.1f s at offset "
			          "%llu (%llu bytes sent)",
			          c->index, idle, (unsigned long long)c->acked,
			          (unsigned long long)c->sent);
		else
			rbb_error(
			        w->run, true,
			        "connection %u: stall: no chargen bytes for %.1f s at offset %llu",
			        c->index, idle, (unsigned long long)c->v.off);
		conn_fail(w, c);
	}
}

static void oneway_traffic(struct rbb_worker *w)
{
	struct rbb_run *run = w->run;
	const struct rbb_opts *o = run->o;
	bool none = o->expect == RBB_EXPECT_NONE;
	struct epoll_event evs[MAX_EVENTS];
	uint64_t now = rbb_now(), next_sweep = now + TICK_NS;
	uint64_t iv = o->tcp_info ? (uint64_t)(o->interval * 1e9) : 0;
	uint64_t next_iv = iv ? run->t_start + iv : UINT64_MAX;
	bool window_open = o->messages != 0;

	for (unsigned i = 0; i < w->n_act; i++) {
		struct rbb_conn *c = w->act[i];

		if (o->messages)
			c->quota = w->quota / w->n_act + (i < w->quota % w->n_act);
		c->last_progress = now;
	}
	if (!w->n_act && o->messages)
		w->ending = true;
	/*
	 * Edges that came while connecting were consumed there: read to EAGAIN
	 * (or EOF) now, or an early EOF or unasked-for bytes would go unseen.
	 */
	for (unsigned i = 0; i < w->n_act; i++) {
		struct rbb_conn *c = w->act[i];

		if (none) {
			none_send(w, c, now);
			if (c->state == CONN_RUNNING || c->state == CONN_SHUTDOWN)
				none_read(w, c, now);
		} else {
			chargen_read(w, c, now, true);
		}
	}

	while (w->left && !atomic_load(&run->stop)) {
		uint64_t wake = next_sweep;
		int n;

		if (!window_open && run->t_measure < wake)
			wake = run->t_measure;
		if (!w->ending && run->t_end < wake)
			wake = run->t_end;
		if (next_iv < wake)
			wake = next_iv;
		now = rbb_now();
		if (w->oneway_more)
			wake = now; /* budgeted connections go on: only poll */
		n = wait_events(w, evs, wake > now ? wake - now : 0);
		if (n < 0 && errno != EINTR) {
			rbb_error(run, true, "epoll_wait: %s", strerror(errno));
			break;
		}
		now = rbb_now();
		if (w->oneway_more) {
			w->oneway_more = false;
			for (unsigned i = 0; i < w->n_act; i++) {
				struct rbb_conn *c = w->act[i];

				if (!c->more || c->state != CONN_RUNNING)
					continue;
				if (none)
					none_send(w, c, now);
				else
					chargen_read(w, c, now, c->more_hup);
			}
		}
		for (int i = 0; i < n; i++) {
			struct rbb_conn *c = evs[i].data.ptr;
			uint32_t e = evs[i].events;

			if (c->state != CONN_RUNNING && c->state != CONN_SHUTDOWN)
				continue; /* closed earlier in this batch */
			if (!none) {
				if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
					chargen_read(w, c, now,
					             e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR));
				continue;
			}
			if (c->state == CONN_RUNNING && (e & (EPOLLOUT | EPOLLERR)))
				none_send(w, c, now);
			if ((c->state == CONN_RUNNING || c->state == CONN_SHUTDOWN) &&
			    (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
				none_read(w, c, now);
		}
		/*
		 * The window's edges: every connection's count read at once, on
		 * this thread, as close to t_measure and t_end as the clock allows.
		 */
		if (!window_open && now >= run->t_measure) {
			oneway_refresh_all(w, now);
			w->oneway_at_measure = w->oneway_total;
			window_open = true;
		}
		if (!w->ending && now >= run->t_end) {
			if (o->messages) {
				rbb_error(run, true,
				          "time limit of %.1f s reached before %llu bytes were %s",
				          o->duration, (unsigned long long)(o->messages * o->size),
				          none ? "acknowledged" : "received");
				break;
			}
			if (none) {
				oneway_refresh_all(w, now);
				w->bytes = w->oneway_total - w->oneway_at_measure;
			}
			w->ending = true;
			oneway_end(w, now);
		}
		if (now >= next_sweep) {
			oneway_stall_check(w, now);
			next_sweep = now + TICK_NS;
		}
		if (now >= next_iv) {
			tcpi_interval(w);
			next_iv += iv;
		}
	}
}

/* ---- --crr: connect, send one message, read its echo, close ------------ */

static void crr_next(struct rbb_worker *w, struct rbb_conn *c, uint64_t now);

static void crr_fail(struct rbb_worker *w, struct rbb_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->state = CONN_FAILED;
	w->left--;
	atomic_store(&w->run->stop, 1);
}

/* The echo came back whole and the server closed after us: one transaction. */
static void crr_done(struct rbb_worker *w, struct rbb_conn *c, uint64_t now)
{
	size_t size = w->run->o->size;

	close(c->fd);
	c->fd = -1;
	w->verified += size;
	if (measuring(w, now)) {
		w->msgs++;
		w->bytes += size;
		rbb_hist_record(w->hist, now - c->txn_start);
	}
	w->last_done = now;
	atomic_fetch_add_explicit(&w->prog_msgs, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&w->prog_bytes, size, memory_order_relaxed);
	c->state = CONN_NEW;
	c->restart = true; /* after this batch: a stale event must not hit the new socket */
}

static void crr_read(struct rbb_worker *w, struct rbb_conn *c, uint64_t now)
{
	for (;;) {
		ssize_t r = recv(c->fd, w->rbuf, RBUF_SIZE, 0);
		int rc;

		if (r > 0) {
			rc = rbb_verifier_feed(&c->v, w->rbuf, (size_t)r);
			if (rc < 0) {
				rbb_error(w->run, true,
				          "connection %u: transaction %llu: %s at offset %llu: "
				          "expected 0x%02x, got 0x%02x%s",
				          c->index, (unsigned long long)c->txn,
				          rc == -EBADMSG ? "byte mismatch" : "extra byte",
				          (unsigned long long)c->v.bad_off, c->v.expected, c->v.got,
				          c->v.bad_off == 0 ? " (the first byte came back "
				                              "different: is this an echo server?)"
				                            : "");
				crr_fail(w, c);
				return;
			}
			c->last_progress = now;
			if (c->state == CONN_RUNNING && c->v.off == w->run->o->size) {
				shutdown(c->fd, SHUT_WR);
				c->state = CONN_SHUTDOWN;
			}
			continue;
		}
		if (r == 0) {
			if (c->state == CONN_SHUTDOWN) {
				crr_done(w, c, now);
				return;
			}
			rbb_error(w->run, true,
			          "connection %u: transaction %llu: short stream: server closed "
			          "after %llu of %zu bytes",
			          c->index, (unsigned long long)c->txn,
			          (unsigned long long)c->v.off, w->run->o->size);
			crr_fail(w, c);
			return;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			return;
		rbb_error(w->run, true,
		          "connection %u: transaction %llu: recv after %llu of %zu bytes: %s",
		          c->index, (unsigned long long)c->txn, (unsigned long long)c->v.off,
		          w->run->o->size, strerror(errno));
		crr_fail(w, c);
		return;
	}
}

static void crr_connected(struct rbb_worker *w, struct rbb_conn *c, uint64_t now)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err) {
		rbb_error(w->run, true, "connection %u: transaction %llu: connect to %s: %s",
		          c->index, (unsigned long long)c->txn, w->run->o->url, strerror(err));
		w->connect_errors++;
		crr_fail(w, c);
		return;
	}
	if (measuring(w, now))
		rbb_hist_record(w->conn_hist, now - c->txn_start);
	w->connected++;
	c->state = CONN_RUNNING;
	c->last_progress = now;
	conn_flush(w, c);
	if (c->state == CONN_RUNNING)
		crr_read(w, c, now);
}

/* Starts this slot's next transaction, or retires the slot. */
static void crr_next(struct rbb_worker *w, struct rbb_conn *c, uint64_t now)
{
	const struct rbb_opts *o = w->run->o;

	c->restart = false;
	if (w->ending || (o->messages && w->quota_used >= w->quota)) {
		c->state = CONN_DONE;
		w->left--;
		return;
	}
	w->quota_used++;
	c->txn++;
	rbb_verifier_init(&c->v, rbb_stream_seed(o->seed, c->txn << 32 | c->index));
	c->sent = 0;
	c->issued = 1;
	c->done = 0;
	c->txn_start = now;
	c->last_progress = now;
	connect_start(w, c);
	if (c->state == CONN_FAILED) {
		w->left--;
		atomic_store(&w->run->stop, 1);
		return;
	}
	if (c->state == CONN_RETRY) {
		/* A full unix backlog: try again on the next pass. */
		c->state = CONN_NEW;
		c->restart = true;
	}
}

static void crr_traffic(struct rbb_worker *w)
{
	struct rbb_run *run = w->run;
	const struct rbb_opts *o = run->o;
	struct epoll_event evs[MAX_EVENTS];
	uint64_t now = rbb_now(), next_sweep = now + TICK_NS;
	uint64_t limit = (uint64_t)(o->stall_timeout * 1e9);

	w->left = w->n_conns;
	for (unsigned i = 0; i < w->n_conns; i++)
		crr_next(w, &w->conns[i], now);
	while (w->left && !atomic_load(&run->stop)) {
		bool retry = false;
		uint64_t wake = next_sweep;
		int n;

		if (!w->ending && run->t_end < wake)
			wake = run->t_end;
		for (unsigned i = 0; i < w->n_conns; i++)
			retry |= w->conns[i].restart;
		now = rbb_now();
		n = wait_events(w, evs, retry ? 0 : wake > now ? wake - now : 0);
		if (n < 0 && errno != EINTR) {
			rbb_error(run, true, "epoll_wait: %s", strerror(errno));
			break;
		}
		now = rbb_now();
		for (int i = 0; i < n; i++) {
			struct rbb_conn *c = evs[i].data.ptr;

			if (c->restart || c->fd < 0)
				continue; /* stale: its socket was closed in this batch */
			if (c->state == CONN_CONNECTING) {
				if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
					crr_connected(w, c, now);
				continue;
			}
			if (c->state == CONN_RUNNING && (evs[i].events & EPOLLOUT))
				conn_flush(w, c);
			if ((c->state == CONN_RUNNING || c->state == CONN_SHUTDOWN) &&
			    (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
				crr_read(w, c, now);
		}
		if (!w->ending && now >= run->t_end) {
			if (o->messages) {
				rbb_error(run, true,
				          "time limit of %.1f s reached before %llu transactions "
				          "were done",
				          o->duration, (unsigned long long)o->messages);
				break;
			}
			w->ending = true;
		}
		for (unsigned i = 0; i < w->n_conns; i++)
			if (w->conns[i].restart)
				crr_next(w, &w->conns[i], now);
		if (now >= next_sweep) {
			for (unsigned i = 0; i < w->n_conns; i++) {
				struct rbb_conn *c = &w->conns[i];

				if (c->fd < 0 || now - c->last_progress < limit)
					continue;
				rbb_error(run, true,
				          "connection %u: transaction %llu: stall: no progress for "
				          "%.1f s %s at offset %llu",
				          c->index, (unsigned long long)c->txn,
				          (double)(now - c->last_progress) / 1e9,
				          c->state == CONN_CONNECTING ? "connecting"
				          : c->state == CONN_SHUTDOWN
				                  ? "waiting for the server's EOF"
				                  : "waiting for the echo",
				          (unsigned long long)c->v.off);
				crr_fail(w, c);
			}
			next_sweep = now + TICK_NS;
		}
	}
}

void *rbb_worker_main(void *arg)
{
	struct rbb_worker *w = arg;
	struct rbb_run *run = w->run;
	uint64_t one = 1;

	if (run->o->crr) {
		/* Connections are made by the transactions; the quota is split by slots. */
		w->n_act = w->n_conns;
		pthread_barrier_wait(&run->barrier);
		pthread_barrier_wait(&run->barrier);
		if (!atomic_load(&run->stop))
			crr_traffic(w);
		if (write(run->done_fd, &one, sizeof(one)) < 0) {
			/* Cannot happen for an eventfd below its maximum. */
		}
		return NULL;
	}
	connect_all(w);
	for (unsigned i = 0; i < w->n_conns; i++) {
		struct rbb_conn *c = &w->conns[i];

		if (c->state != CONN_RUNNING)
			continue;
		w->left++;
		if (c->active) {
			c->act_ix = w->n_act;
			w->act[w->n_act++] = c;
		}
	}
	pthread_barrier_wait(&run->barrier);
	/* The main thread sets the times, quotas and rates here. */
	pthread_barrier_wait(&run->barrier);
	if (!atomic_load(&run->stop)) {
		if (one_way(w))
			oneway_traffic(w);
		else
			traffic(w);
	}
	if (write(run->done_fd, &one, sizeof(one)) < 0) {
		/* Cannot happen for an eventfd below its maximum; nothing to do. */
	}
	return NULL;
}
