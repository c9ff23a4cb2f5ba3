/* SPDX-License-Identifier: MIT */
/*
 * The readiness model: one state machine, written once per flow, driven by
 * any poller (edge- or level-triggered). A socket's readiness wakes the
 * flows that read from it or write to it; the copy strategy (copy.h) moves
 * the bytes. See DESIGN.md, "The edge-triggered rules"; the rule numbers
 * are quoted where the code implements them.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

#define EVENT_BATCH 256

/* The readiness model's per-worker state. */
struct reactor {
	const struct rb_poller_ops *ops;
	struct rb_poller *poller;
	bool edge;
	struct rb_handle ctl_h;
	struct rb_list sessions; /* every open session */
	struct rb_list ready;    /* read budget used up: run after the others */
	struct rb_list memwait;  /* waiting for chunks, in the order they began */
	struct rb_list grave;    /* closed: freed after the event batch */
	uint64_t memwait_puts;   /* pool->puts when the memwait list was last woken */
};

static inline struct reactor *R(struct rb_worker *w)
{
	return w->model;
}

static void session_run(struct rb_worker *w, struct rb_session *s);
static bool impair_eof_ready(struct rb_worker *w, struct rb_flow *f);

static struct rb_list *queue_list(struct reactor *r, enum rb_session_queue q)
{
	switch (q) {
	case RB_Q_READY:
		return &r->ready;
	case RB_Q_MEMWAIT:
		return &r->memwait;
	case RB_Q_GRAVE:
		return &r->grave;
	case RB_Q_NONE:
		break;
	}
	return NULL;
}

/*
 * The only place a session changes lists: off the one it is on, onto the
 * one asked for (RB_Q_NONE: none), so it can never be on two at once (that
 * corrupted both and livelocked the worker, issue 9). The graveyard is final.
 */
static void session_queue(struct rb_worker *w, struct rb_session *s, enum rb_session_queue q)
{
	assert(s->queue != RB_Q_GRAVE);
	assert((s->queue == RB_Q_NONE) == rb_list_unlinked(&s->qlink));
	if (s->queue == q)
		return;
	if (s->queue != RB_Q_NONE)
		rb_list_del(&s->qlink);
	s->queue = q;
	if (q != RB_Q_NONE)
		rb_list_add_tail(queue_list(R(w), q), &s->qlink);
}

/* Run again after the others. One waiting for memory stays where it is:
 * the memory wake-up runs it, and reading could not progress before. */
static void ready_push(struct rb_worker *w, struct rb_session *s)
{
	if (s->closed || s->queue == RB_Q_MEMWAIT)
		return;
	session_queue(w, s, RB_Q_READY);
}

/* Reading needs a chunk the memory cap does not allow now. */
static void memwait_push(struct rb_worker *w, struct rb_session *s)
{
	session_queue(w, s, RB_Q_MEMWAIT);
	RB_STAT_ADD(w, memory_waits, 1);
}

static bool flow_wants_input(const struct rb_flow *f)
{
	return rb__flow_wants_input(f) && f->src->s->queue != RB_Q_MEMWAIT;
}

/* Level-triggered pollers must be told what we want; edge ones never are (rule 1). */
static void sock_set_interest(struct rb_worker *w, struct rb_sock *k)
{
	struct reactor *r = R(w);
	uint32_t want = 0;

	if (r->edge || k->fd < 0 || (k->flags & SOCK_DETACHED))
		return;
	if (k->flags & SOCK_CONNECTING) {
		want = RB_WRITE; /* writable: the connect finished, one way or the other */
	} else {
		if (k->in && flow_wants_input(k->in))
			want |= RB_READ;
		/* Bytes an impairment holds back wait for its timer, not for
		 * the socket. */
		if (k->out &&
		    ((rb__flow_pending(k->out) > 0 && !(k->out->imp && k->out->imp->held)) ||
		     (!k->out->src && !(k->out->flags & FLOW_RD_EOF))))
			want |= RB_WRITE;
	}
	if (want != k->interest) {
		int err = r->ops->mod(r->poller, k->fd, k, want);
		if (err < 0)
			rb__log(RB_LOG_ERR, "poller mod fd %d: %s", k->fd, strerror(-err));
		k->interest = want;
	}
}

static void session_close(struct rb_worker *w, struct rb_session *s, enum rb_close_reason why)
{
	struct reactor *r = R(w);
	bool error = why == RB_CLOSE_ERROR;

	if (s->closed)
		return;
	rb__timer_cancel(&w->timers, &s->timer);
	rb__timer_cancel(&w->timers, &s->idle_timer);
	if (s->imp)
		rb__timer_cancel(&w->timers, &s->imp->timer);
	for (unsigned i = 0; i < s->n_socks; i++) {
		struct rb_sock *k = &s->sock[i];
		if (k->fd < 0)
			continue;
		/* A relay is transparent: an error on one side (an RST, a failed
		 * write) is passed on as an RST on the other, not as a clean FIN. */
		if (error && s->n_socks > 1) {
			struct linger lg = {.l_onoff = 1, .l_linger = 0};
			setsockopt(k->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		}
		if (!(k->flags & SOCK_DETACHED))
			r->ops->del(r->poller, k->fd, k);
		close(k->fd);
		k->fd = -1;
	}
	for (unsigned i = 0; i < s->n_flows; i++) {
		RB_STAT_SUB(w, buffered, rb__flow_pending(&s->flow[i]));
		if (s->flow[i].copy)
			s->flow[i].copy->release(w, &s->flow[i]);
		s->flow[i].imp = NULL;
	}
	free(s->imp);
	s->imp = NULL;
	rb_list_del(&s->all);
	/* Freed after the whole event batch: later events for it are stale (rule 7). */
	s->closed = true;
	session_queue(w, s, RB_Q_GRAVE);
	/* Counted last: whoever sees it closed sees its bytes gone too. */
	rb__session_closing(w, s, why);
}

/* n bytes (>= 0) of the flow went to its sink. */
static inline void flow_sent(struct rb_worker *w, struct rb_flow *f, ssize_t n, bool full)
{
	struct rb_sock *sink = f->sink;

	RB_STAT_ADD(w, bytes_out, (uint64_t)n);
	RB_STAT_SUB(w, buffered, (uint64_t)n);
	if (sink->upstream)
		RB_STAT_ADD(w, upstream_bytes_out, (uint64_t)n);
	else
		sink->s->bytes_out += (uint64_t)n;
	sink->s->last_io_us = sink->s->last_write_us = w->now_us;
	if (full || n == 0)
		sink->flags &= ~SOCK_CAN_WRITE;
}

/* Rule 5: no new edge will come for input already queued in the kernel,
 * so resume reading ourselves: below half the cap (so a paused flow does
 * not flap on every small write), or once a pipe that could not tell full
 * from empty has drained some. */
static inline void flow_resume(struct rb_worker *w, struct rb_flow *f, bool progress)
{
	if (progress &&
	    ((f->flags & FLOW_PIPE_WAIT) ||
	     ((f->flags & FLOW_PAUSED) && rb__flow_pending(f) <= f->copy->cap(w, f) / 2))) {
		f->flags &= ~(FLOW_PIPE_WAIT | FLOW_PAUSED);
		if (f->src->flags & SOCK_CAN_READ)
			ready_push(w, f->src->s);
	}
}

static int flow_flush_impaired(struct rb_worker *w, struct rb_flow *f);

/*
 * Send from the flow's buffer until it is empty or the sink is full
 * (rule 4). Returns -1 if the session was closed.
 */
static int flow_flush(struct rb_worker *w, struct rb_flow *f)
{
	struct rb_sock *sink = f->sink;
	bool progress = false;

	if (f->imp)
		return flow_flush_impaired(w, f);
	while (rb__flow_pending(f) > 0 && (sink->flags & SOCK_CAN_WRITE)) {
		bool full = false;
		ssize_t n = f->copy->flush(w, f, sink->fd, &full);
		if (n >= 0) {
			flow_sent(w, f, n, full);
			progress |= n > 0;
			continue;
		}
		if (n == -EINTR)
			continue;
		if (n == -EAGAIN) {
			sink->flags &= ~SOCK_CAN_WRITE;
			break;
		}
		session_close(w, f->sink->s, RB_CLOSE_ERROR);
		return -1;
	}
	flow_resume(w, f, progress);
	return 0;
}

/*
 * Read and drop whatever the source sends, until its FIN: the discard
 * service, and every flow while stopping. Closing a socket with unread
 * input makes the kernel send an RST and drop the bytes still queued for
 * the peer (nginx's lingering close). Returns -1 if the session was closed.
 */
static int flow_drop(struct rb_worker *w, struct rb_flow *f)
{
	bool stopping = w->stopping;
	struct rb_sock *src = f->src;
	size_t budget = w->srv->cfg.read_budget;

	while ((src->flags & SOCK_CAN_READ) && !(f->flags & FLOW_SRC_EOF)) {
		ssize_t n;

		if (budget == 0) {
			ready_push(w, src->s);
			break;
		}
		n = recv(src->fd, w->scratch, sizeof(w->scratch), MSG_DONTWAIT);
		RB_STAT_ADD(w, read_calls, 1);
		if (n > 0) {
			if (stopping)
				RB_STAT_ADD(w, stop_discarded, (uint64_t)n);
			else
				RB_STAT_ADD(w, bytes_in, (uint64_t)n);
			if (!src->upstream)
				src->s->bytes_in += (uint64_t)n;
			src->s->last_io_us = w->now_us;
			budget = (size_t)n < budget ? budget - (size_t)n : 0;
			continue;
		}
		if (n == 0) {
			f->flags |= FLOW_SRC_EOF | FLOW_RD_EOF;
			src->flags &= ~SOCK_CAN_READ;
			break;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN) {
			src->flags &= ~SOCK_CAN_READ;
			break;
		}
		session_close(w, src->s, RB_CLOSE_ERROR);
		return -1;
	}
	return 0;
}

/*
 * Read into the flow until EAGAIN, a drained source, EOF, the budget or the
 * cap (rule 2), sending after every read (rule 4). Returns -1 if the
 * session was closed.
 */
static int flow_read(struct rb_worker *w, struct rb_flow *f)
{
	struct rb_sock *src = f->src;
	size_t budget = w->srv->cfg.read_budget;
	struct rb_session *s;

	if (!src)
		return 0; /* a generator */
	if ((f->flags & FLOW_DISCARD) || !f->sink)
		return flow_drop(w, f);
	s = src->s;
	while ((src->flags & SOCK_CAN_READ) && flow_wants_input(f)) {
		size_t cap = f->copy->cap(w, f), pending = rb__flow_pending(f), room;
		bool drained = false;
		ssize_t n;

		/* Rule 8: never read into a full buffer (0 would look like EOF). */
		if (pending >= cap) {
			f->flags |= FLOW_PAUSED;
			RB_STAT_ADD(w, pauses, 1);
			break;
		}
		if (budget == 0) {
			/* Rule 3: fairness. Come back after the others had their turn. */
			ready_push(w, s);
			RB_STAT_ADD(w, requeues, 1);
			break;
		}
		room = cap - pending;
		n = f->copy->read_into(w, f, src->fd, room < budget ? room : budget, &drained);
		if (n > 0) {
			/* What the flow now holds to send: all of it, but for a
			 * strategy that keeps only part (sockperf's answers). */
			RB_STAT_ADD(w, bytes_in, (uint64_t)n);
			RB_STAT_ADD(w, buffered, (uint64_t)(rb__flow_pending(f) - pending));
			/* Arrived by now: the clock read after the read, not the
			 * wake-up's (the thread may have waited for the CPU since,
			 * and the bytes have come meanwhile: due that much early). */
			if (f->imp)
				rb__impair_arrived(f->imp, &s->imp->rng,
				                   rb__flow_pending(f) - pending, rb__now_us());
			if (src->upstream)
				RB_STAT_ADD(w, upstream_bytes_in, (uint64_t)n);
			else
				s->bytes_in += (uint64_t)n;
			/* Output pending from now: the write timeout counts from here. */
			if (pending == 0)
				s->last_write_us = w->now_us;
			s->last_io_us = w->now_us;
			RB_STAT_MAX(w, peak_buffered, w->st.buffered);
			RB_STAT_MAX(w, peak_conn_buffered, rb__flow_pending(f));
			budget -= (size_t)n;
			/* Drained, unless the source's FIN is already known: its edge
			 * came with this data, so no later edge would report the EOF
			 * (nginx's pending_eof). */
			if (drained && !(src->flags & SOCK_PEER_HUP))
				src->flags &= ~SOCK_CAN_READ;
			if (flow_flush(w, f) < 0)
				return -1;
			continue;
		}
		switch (n) {
		case 0:
			f->flags |= FLOW_RD_EOF | FLOW_SRC_EOF;
			src->flags &= ~SOCK_CAN_READ;
			if (f->imp)
				rb__impair_eof(f->imp, &s->imp->rng, rb__now_us());
			return 0;
		case -EINTR:
			continue;
		case -EAGAIN:
			src->flags &= ~SOCK_CAN_READ;
			return 0;
		case -ENOBUFS:
			memwait_push(w, s);
			return 0;
		case -EBUSY:
			/* Cannot tell an empty source from a full pipe: wait for a
			 * flush to drain some. */
			f->flags |= FLOW_PIPE_WAIT;
			RB_STAT_ADD(w, pauses, 1);
			return 0;
		default:
			/* A peer that breaks the protocol (sockperf framing) is
			 * reset, not closed as if it had been answered in full. */
			if (n == -EPROTO)
				setsockopt(src->fd, SOL_SOCKET, SO_LINGER,
				           &(struct linger){.l_onoff = 1, .l_linger = 0},
				           sizeof(struct linger));
			session_close(w, s, RB_CLOSE_ERROR);
			return -1;
		}
	}
	return 0;
}

/*
 * A generator (chargen) writes its stream while the sink takes it, up to
 * the read budget per run (the others get their turn). Returns -1 if the
 * session was closed.
 */
static int gen_flush(struct rb_worker *w, struct rb_flow *f)
{
	const unsigned char *pat = rb__chargen_pattern();
	struct rb_sock *sink = f->sink;
	size_t budget = w->srv->cfg.read_budget;
	struct iovec iov[8];

	while (!(f->flags & FLOW_RD_EOF) && (sink->flags & SOCK_CAN_WRITE)) {
		struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 8};
		size_t want = 0;
		ssize_t n;

		if (budget == 0) {
			ready_push(w, sink->s);
			break;
		}
		/* From the stream's position, then whole periods. */
		for (int i = 0; i < 8; i++) {
			iov[i].iov_base = (void *)(pat + (i ? 0 : f->gen_off));
			iov[i].iov_len = RB_CHARGEN_PERIOD - (i ? 0 : f->gen_off);
			want += iov[i].iov_len;
		}
		n = sendmsg(sink->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		RB_STAT_ADD(w, write_calls, 1);
		if (n > 0) {
			RB_STAT_ADD(w, bytes_out, (uint64_t)n);
			sink->s->bytes_out += (uint64_t)n;
			sink->s->last_io_us = sink->s->last_write_us = w->now_us;
			f->gen_off = (f->gen_off + (size_t)n) % RB_CHARGEN_PERIOD;
			budget = (size_t)n < budget ? budget - (size_t)n : 0;
			if ((size_t)n < want)
				sink->flags &= ~SOCK_CAN_WRITE;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			sink->flags &= ~SOCK_CAN_WRITE;
			break;
		}
		session_close(w, sink->s, RB_CLOSE_ERROR);
		return -1;
	}
	return 0;
}

/*
 * Run every flow of the session: send what is buffered, read what is
 * there, and pass a finished flow's end on to its sink (rule 6): our FIN
 * once everything is sent. A session whose flows are all done closes.
 */
static void session_run(struct rb_worker *w, struct rb_session *s)
{
	bool all_done = true;

	if (s->closed)
		return;
	for (unsigned i = 0; i < s->n_flows; i++) {
		struct rb_flow *f = &s->flow[i];
		if (!f->src && gen_flush(w, f) < 0)
			return;
		if (rb__flow_pending(f) > 0 && flow_flush(w, f) < 0)
			return;
	}
	for (unsigned i = 0; i < s->n_flows; i++)
		if (flow_read(w, &s->flow[i]) < 0)
			return;
	/* chargen runs until its peer leaves: its FIN ends the session. */
	if (s->kind == RB_SESSION_CHARGEN && (s->flow[0].flags & FLOW_SRC_EOF) &&
	    !(s->flow[1].flags & FLOW_DISCARD)) {
		session_close(w, s, RB_CLOSE_EOF);
		return;
	}
	for (unsigned i = 0; i < s->n_flows; i++) {
		struct rb_flow *f = &s->flow[i];
		/* Everything passed on: our FIN goes now (not before the sink
		 * is connected). Stopping, the flow then lingers, discarding,
		 * until the source's FIN (or the deadline). */
		if ((f->flags & FLOW_RD_EOF) && rb__flow_pending(f) == 0 && f->sink &&
		    !(f->flags & FLOW_SINK_SHUT) && !(f->sink->flags & SOCK_CONNECTING) &&
		    (!f->imp || impair_eof_ready(w, f))) {
			shutdown(f->sink->fd, SHUT_WR);
			f->flags |= FLOW_SINK_SHUT;
		}
		if (!rb__flow_done(f))
			all_done = false;
	}
	if (all_done) {
		session_close(w, s, RB_CLOSE_EOF);
		return;
	}
	for (unsigned i = 0; i < s->n_flows; i++)
		if (s->flow[i].copy && rb__flow_pending(&s->flow[i]) == 0)
			s->flow[i].copy->idle(w, &s->flow[i]);
	for (unsigned i = 0; i < s->n_socks; i++)
		sock_set_interest(w, &s->sock[i]);
}

/*
 * The socket is shut both ways (EPOLLHUP/EPOLLERR, POLLHUP/POLLERR): after a
 * peer's RST, or after our FIN and the peer's. Nothing more can be sent, so
 * it is handled now, whatever the session was waiting for: one waiting for
 * memory must not keep reporting a hang-up nobody looks at (a
 * level-triggered spin, issue 9).
 */
static void sock_hangup(struct rb_worker *w, struct rb_sock *k)
{
	int err = 0;
	socklen_t len = sizeof(err);

	getsockopt(k->fd, SOL_SOCKET, SO_ERROR, &err, &len);
	/* Lingering after our FIN, a hang-up is the peer's FIN: a clean end. */
	session_close(w, k->s,
	              err != 0 || !k->out || !(k->out->flags & FLOW_SINK_SHUT) ? RB_CLOSE_ERROR
	                                                                       : RB_CLOSE_EOF);
}

/* ---- the relay's upstream connect ---- */

static void upstream_failed(struct rb_worker *w, struct rb_session *s, int err)
{
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	unsigned sup;

	RB_STAT_ADD(w, upstream_failures, 1);
	if (rb__ratelimit_ok(&w->rl_upstream, &sup))
		rb__log(RB_LOG_ERR, "upstream %s: %s (%u more suppressed)", w->srv->upstream->url,
		        strerror(err), sup);
	/* The client gets an RST: a FIN would look like a complete answer. */
	setsockopt(s->sock[0].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	session_close(w, s, RB_CLOSE_ERROR);
}

static void upstream_connected(struct rb_worker *w, struct rb_session *s)
{
	struct rb_upstream *up = w->srv->upstream;
	struct rb_sock *k = &s->sock[1];
	uint64_t us = rb__now_us() - s->connect_start_us;

	k->flags &= ~SOCK_CONNECTING;
	k->flags |= SOCK_CAN_WRITE;
	rb__timer_cancel(&w->timers, &s->timer);
	/* Later connections start from the address that worked. */
	__atomic_store_n(&up->last_ok, (s->up_first + s->up_tried) % up->n, __ATOMIC_RELAXED);
	rb__upstream_connected(w, us);
	rb__tune_accepted(w, k->fd, !up->is_unix);
}

/* Connect to the next address not tried yet; false (with *err) if none is left. */
static bool upstream_try(struct rb_worker *w, struct rb_session *s, int *err)
{
	struct reactor *r = R(w);
	const struct rb_upstream *up = w->srv->upstream;
	struct rb_sock *k = &s->sock[1];

	for (; s->up_tried < up->n; s->up_tried++) {
		unsigned i = (s->up_first + s->up_tried) % up->n;
		uint32_t ev = r->edge ? RB_READ | RB_WRITE : RB_WRITE;
		int fd, rc = rb__upstream_connect(up, i, &fd), added;

		if (rc < 0 && rc != -EINPROGRESS) {
			*err = -rc;
			continue;
		}
		if (r->ops->max_fd >= 0 && fd > r->ops->max_fd) {
			close(fd);
			*err = EMFILE;
			continue;
		}
		added = r->ops->add(r->poller, fd, k, ev);
		if (added < 0) {
			close(fd);
			*err = -added;
			continue;
		}
		k->fd = fd;
		k->interest = ev;
		k->flags = rc == 0 ? 0 : SOCK_CONNECTING;
		if (rc == 0)
			upstream_connected(w, s);
		return true;
	}
	return false;
}

/* The connect in progress ended: connected (true), or on to the next address. */
static bool upstream_event(struct rb_worker *w, struct rb_sock *k)
{
	struct rb_session *s = k->s;
	socklen_t len = sizeof(int);
	int err = 0;

	if (getsockopt(k->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err == 0) {
		upstream_connected(w, s);
		return true;
	}
	R(w)->ops->del(R(w)->poller, k->fd, k);
	close(k->fd);
	k->fd = -1;
	k->flags = 0;
	s->up_tried++;
	if (!upstream_try(w, s, &err))
		upstream_failed(w, s, err);
	return false;
}

static void connect_timeout(struct rb_timer *t, void *arg)
{
	upstream_failed(arg, rb_container_of(t, struct rb_session, timer), ETIMEDOUT);
}

/*
 * A relay's socket shut both ways (our FIN and its peer's) with no error:
 * unlike an echo's, the other flow may still have bytes to send the other
 * way, and bytes may still wait to be read. Read on to EOF without the
 * poller (it has nothing more to say, and a level-triggered one would
 * repeat the hang-up for ever).
 */
static void relay_hangup(struct rb_worker *w, struct rb_sock *k)
{
	int err = 0;
	socklen_t len = sizeof(err);

	getsockopt(k->fd, SOL_SOCKET, SO_ERROR, &err, &len);
	if (err) {
		session_close(w, k->s, RB_CLOSE_ERROR);
		return;
	}
	R(w)->ops->del(R(w)->poller, k->fd, k);
	k->flags |= SOCK_DETACHED | SOCK_CAN_READ | SOCK_PEER_HUP;
	session_run(w, k->s);
}

/* Payload bytes moved so far, both ways, to clients and upstreams. */
static uint64_t bytes_moved(const struct rb_worker *w)
{
	return w->st.bytes_in + w->st.bytes_out + w->st.upstream_bytes_in +
	       w->st.upstream_bytes_out;
}

static void sock_event(struct rb_worker *w, struct rb_sock *k, uint32_t ev)
{
	uint64_t moved = bytes_moved(w);

	if (k->s->closed)
		return; /* stale: closed earlier in this batch (rule 7) */
	if ((k->flags & SOCK_CONNECTING) && !upstream_event(w, k))
		return;
	if (ev & RB_ERR) {
		if (k->s->kind == RB_SESSION_RELAY)
			relay_hangup(w, k);
		else
			sock_hangup(w, k);
		return;
	}
	if (ev & RB_HUP)
		k->flags |= SOCK_PEER_HUP;
	if (ev & (RB_READ | RB_HUP))
		k->flags |= SOCK_CAN_READ;
	if (ev & (RB_WRITE | RB_HUP))
		k->flags |= SOCK_CAN_WRITE;
	session_run(w, k->s);
	/* A wake-up for nothing (issue 18: what each event is worth). */
	if (bytes_moved(w) == moved && !k->s->closed)
		RB_STAT_ADD(w, idle_events, 1);
}

/* ---- --idle-timeout and --write-timeout: one timer per session ---- */

static bool session_pending(const struct rb_session *s)
{
	for (unsigned i = 0; i < s->n_flows; i++)
		if (rb__flow_pending(&s->flow[i]) > 0)
			return true;
	return false;
}

static void timeouts_arm(struct rb_worker *w, struct rb_session *s)
{
	rb__timer_arm(&w->timers, &s->idle_timer,
	              rb__timeouts_due(&w->srv->cfg, s, session_pending(s), rb__now_us()));
}

static void timeouts_fire(struct rb_timer *t, void *arg)
{
	struct rb_session *s = rb_container_of(t, struct rb_session, idle_timer);
	struct rb_worker *w = arg;
	bool pending = session_pending(s);

	switch (rb__timeouts_expired(&w->srv->cfg, s, pending, rb__now_us())) {
	case RB_TIMEOUT_WRITE:
		/* The peer stopped reading: what it holds back is dropped. */
		rb__session_linger0(s);
		session_close(w, s, RB_CLOSE_WRITE_TIMEOUT);
		return;
	case RB_TIMEOUT_IDLE:
		/* Nothing moved either way: a FIN, as after a flush (nothing is
		 * pending unless it is stuck, and then a FIN would lie: RST). */
		if (pending)
			rb__session_linger0(s);
		else
			for (unsigned i = 0; i < s->n_socks; i++)
				if (s->sock[i].fd >= 0 && !(s->sock[i].flags & SOCK_CONNECTING))
					shutdown(s->sock[i].fd, SHUT_WR);
		session_close(w, s, RB_CLOSE_IDLE);
		return;
	case RB_TIMEOUT_NONE:
		break;
	}
	timeouts_arm(w, s);
}

/* ---- impairments (impair.h): bytes held back, flows cut ---- */

/* The session's impairment timer, at `when` unless it is due earlier. */
static void impair_arm(struct rb_worker *w, struct rb_session *s, uint64_t when)
{
	struct rb_timer *t = &s->imp->timer;

	if (when == UINT64_MAX || (rb__timer_armed(t) && t->when <= when))
		return;
	rb__timer_arm(&w->timers, t, when);
}

/* The session ends with an RST on every socket. */
static void impair_reset(struct rb_worker *w, struct rb_session *s)
{
	struct linger lg = {.l_onoff = 1, .l_linger = 0};

	for (unsigned i = 0; i < s->n_socks; i++)
		if (s->sock[i].fd >= 0)
			setsockopt(s->sock[i].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	session_close(w, s, RB_CLOSE_ERROR);
}

/* Bytes the kernel has not delivered from fd yet (0 if it cannot say). */
static int sock_unsent(int fd)
{
	int n = 0;

	return ioctl(fd, SIOCOUTQ, &n) == 0 && n > 0 ? n : 0;
}

/*
 * The flow has sent its N bytes: reset (once the kernel has delivered
 * them, so the peer can read them before the RST; at most a second), close
 * (a FIN once the flow is empty: what it held is dropped, and its input is
 * read and dropped until the source's FIN) or stall (nothing more, either
 * way, for good). Returns -1 if the session was closed.
 */
static int impair_cut(struct rb_worker *w, struct rb_flow *f)
{
	struct rb_flow_impair *fi = f->imp;
	struct rb_session *s = f->sink->s;

	fi->cut_done = true;
	RB_STAT_ADD(w, impair_cuts, 1);
	RB_STAT_SUB(w, buffered, rb__flow_pending(f));
	f->copy->release(w, f);
	rb__impair_dropped(fi);
	switch (fi->cut) {
	case RB_CUT_RESET:
		f->flags |= FLOW_STALLED;
		if (sock_unsent(f->sink->fd) == 0) {
			impair_reset(w, s);
			return -1;
		}
		s->imp->reset_by = w->now_us + rb__ms_to_us(1000);
		impair_arm(w, s, w->now_us + RB_US_PER_MS);
		return 0;
	case RB_CUT_CLOSE:
		f->flags |= FLOW_RD_EOF | FLOW_DISCARD;
		f->flags &= ~(FLOW_PAUSED | FLOW_PIPE_WAIT);
		return 0;
	case RB_CUT_STALL:
	case RB_CUT_NONE:
		break;
	}
	f->flags |= FLOW_STALLED;
	f->flags &= ~(FLOW_PAUSED | FLOW_PIPE_WAIT);
	return 0;
}

/*
 * flow_flush for a flow with impairments: send only what is due (delay),
 * what the bucket allows (rate), a slice at a time, and no more than the
 * bytes after which the flow is cut; when nothing may go, the flow is
 * held and the session's timer set for when something may. Returns -1 if
 * the session was closed.
 */
static int flow_flush_impaired(struct rb_worker *w, struct rb_flow *f)
{
	struct rb_flow_impair *fi = f->imp;
	struct rb_sock *sink = f->sink;
	bool progress = false;

	fi->held = false;
	while (!fi->cut_done) {
		size_t pending = rb__flow_pending(f), allow;
		bool full = false;
		ssize_t n;

		if (rb__impair_cut_due(fi)) {
			if (impair_cut(w, f) < 0)
				return -1;
			break;
		}
		if (pending == 0 || !(sink->flags & SOCK_CAN_WRITE))
			break;
		allow = rb__impair_allow(fi, pending, w->now_us);
		if (allow == 0) {
			fi->held = true;
			RB_STAT_ADD(w, impair_holds, 1);
			impair_arm(w, sink->s, rb__impair_wake(fi, pending, w->now_us));
			break;
		}
		n = f->copy->flush_upto(w, f, sink->fd, allow, &full);
		if (n >= 0) {
			flow_sent(w, f, n, full);
			/* The next slice: D after this write, not the wake-up. */
			rb__impair_sent(fi, (size_t)n, rb__now_us());
			progress |= n > 0;
			continue;
		}
		if (n == -EINTR)
			continue;
		if (n == -EAGAIN) {
			sink->flags &= ~SOCK_CAN_WRITE;
			break;
		}
		session_close(w, sink->s, RB_CLOSE_ERROR);
		return -1;
	}
	flow_resume(w, f, progress);
	return 0;
}

/* May the flow's end (our FIN) be passed on now? A delayed flow's FIN
 * waits as long as its bytes did. */
static bool impair_eof_ready(struct rb_worker *w, struct rb_flow *f)
{
	struct rb_flow_impair *fi = f->imp;

	if (fi->cut_done || rb__impair_eof_ok(fi, w->now_us))
		return true;
	impair_arm(w, f->sink->s, fi->eof_due);
	return false;
}

static void session_start(struct rb_worker *w, struct rb_session *s);

static void impair_fire(struct rb_timer *t, void *arg)
{
	struct rb_session_impair *si = rb_container_of(t, struct rb_session_impair, timer);
	struct rb_session *s = si->owner;
	struct rb_worker *w = arg;

	if (s->closed)
		return;
	if (si->gate_us) {
		/* --accept-delay is over: serve it (unless we are stopping). */
		si->gate_us = 0;
		if (w->stopping) {
			session_close(w, s, RB_CLOSE_SHUTDOWN);
			return;
		}
		for (unsigned i = 0; i < s->n_flows; i++)
			if (!(s->flow[i].imp && s->flow[i].imp->cut_done))
				s->flow[i].flags &= ~FLOW_STALLED;
		session_start(w, s);
		return;
	}
	if (si->reset_by) {
		for (unsigned i = 0; i < s->n_flows; i++) {
			struct rb_flow *f = &s->flow[i];
			if (f->imp && f->imp->cut_done && f->imp->cut == RB_CUT_RESET &&
			    sock_unsent(f->sink->fd) > 0 && w->now_us < si->reset_by) {
				impair_arm(w, s, w->now_us + RB_US_PER_MS);
				return;
			}
		}
		impair_reset(w, s);
		return;
	}
	session_run(w, s);
}

/*
 * A new session draws its impairments (impair.c). Returns true if it is
 * not to be started now: refused (reset at once), or waiting for
 * --accept-delay (the timer starts it).
 */
static bool impair_open(struct rb_worker *w, struct rb_session *s, const struct rb_impair_set *is)
{
	struct rb_session_impair *si = rb__impair_session_new(
	        &is->cfg, w->id, s->id, s->n_flows, s->kind == RB_SESSION_RELAY, w->now_us);

	if (!si)
		return false;
	s->imp = si;
	si->owner = s;
	rb__timer_init(&si->timer, impair_fire);
	RB_STAT_ADD(w, impaired_sessions, 1);
	if (s->kind == RB_SESSION_ECHO || s->kind == RB_SESSION_RELAY)
		for (unsigned i = 0; i < s->n_flows; i++) {
			struct rb_flow_impair *fi = &si->flow[i];
			if (fi->delay || fi->rate_bps || fi->slice_size || fi->cut != RB_CUT_NONE)
				s->flow[i].imp = fi;
		}
	if (si->refuse) {
		RB_STAT_ADD(w, impair_refused, 1);
		impair_reset(w, s);
		return true;
	}
	if (si->gate_us) {
		for (unsigned i = 0; i < s->n_flows; i++)
			s->flow[i].flags |= FLOW_STALLED;
		rb__timer_arm(&w->timers, &si->timer, si->gate_us);
		return true;
	}
	return false;
}

/* Start serving: a relay connects its upstream; the first run. */
static void session_start(struct rb_worker *w, struct rb_session *s)
{
	int err;

	if (s->kind == RB_SESSION_ECHO && !s->imp)
		return; /* the first event runs it */
	if (s->kind == RB_SESSION_RELAY) {
		/* Reading from the client starts at once; its bytes wait in the
		 * flow (up to the cap) until the upstream is connected. */
		s->connect_start_us = rb__now_us();
		s->up_first = __atomic_load_n(&w->srv->upstream->last_ok, __ATOMIC_RELAXED);
		rb__timer_init(&s->timer, connect_timeout);
		rb__timer_arm(&w->timers, &s->timer,
		              s->connect_start_us + rb__ms_to_us(w->srv->cfg.connect_timeout_ms));
		if (!upstream_try(w, s, &err)) {
			upstream_failed(w, s, err);
			return;
		}
	}
	session_run(w, s);
}

/* An accepted socket becomes a session: an echo, a relay, discard or chargen. */
static void session_new(struct rb_worker *w, int fd, bool tcp)
{
	struct reactor *r = R(w);
	const struct rb_config *cfg = &w->srv->cfg;
	struct rb_session *s;
	uint32_t events = r->edge ? (RB_READ | RB_WRITE) : RB_READ;
	int err;

	if (r->ops->max_fd >= 0 && fd > r->ops->max_fd) {
		rb__refuse(w, fd, -EMFILE);
		return;
	}
	s = malloc(sizeof(*s));
	if (!s) {
		rb__refuse(w, fd, -ENOMEM);
		return;
	}
	if (!rb__worker_admit(w, fd)) {
		free(s);
		return;
	}
	if (w->srv->upstream)
		rb__session_init_relay(s, fd, tcp, w->copy);
	else if (cfg->service == RB_SERVICE_DISCARD)
		rb__session_init_discard(s, fd, tcp);
	else if (cfg->service == RB_SERVICE_CHARGEN)
		rb__session_init_chargen(s, fd, tcp);
	else if (cfg->service == RB_SERVICE_SOCKPERF)
		rb__session_init_echo(s, fd, tcp, &rb__copy_sockperf);
	else
		rb__session_init_echo(s, fd, tcp, w->copy);
	s->sock[0].interest = events;
	rb__tune_accepted(w, fd, tcp);
	err = r->ops->add(r->poller, fd, &s->sock[0], events);
	if (err < 0) {
		free(s);
		rb__worker_unadmit(w);
		rb__refuse(w, fd, err);
		return;
	}
	rb_list_add_tail(&r->sessions, &s->all);
	RB_STAT_ADD(w, accepted, 1);
	RB_STAT_ADD(w, active, 1);
	rb__session_opened(w, s);
	if (cfg->idle_timeout_ms || cfg->write_timeout_ms) {
		rb__timer_init(&s->idle_timer, timeouts_fire);
		timeouts_arm(w, s);
	}
	if (w->srv->impair) {
		/* One load: the set may be replaced while we run (SIGHUP). */
		const struct rb_impair_set *is = __atomic_load_n(&w->srv->impair, __ATOMIC_ACQUIRE);
		if (is && is->session && impair_open(w, s, is))
			return; /* refused, or waiting for --accept-delay */
	}
	session_start(w, s);
}

static void listener_accept(struct rb_worker *w, struct rb_listener *l)
{
	unsigned budget = w->srv->cfg.accept_budget;

	l->pending = false;
	for (unsigned i = 0; i < budget; i++) {
		int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0) {
			session_new(w, fd, l->tcp);
			continue;
		}
		switch (rb__accept_error(w, l->fd, errno)) {
		case RB_ACCEPT_RETRY:
			continue;
		case RB_ACCEPT_IDLE:
			return;
		case RB_ACCEPT_BACKOFF:
			/* Not pending: nothing runs it before its timer. */
			rb__timer_arm(&w->timers, &l->retry,
			              rb__now_us() + rb__ms_to_us(RB_ACCEPT_BACKOFF_MS));
			return;
		}
	}
	/* Budget used up: more may wait, and no new edge will say so. */
	l->pending = true;
}

static void listener_retry(struct rb_timer *t, void *arg)
{
	struct rb_listener *l = rb_container_of(t, struct rb_listener, retry);

	if (l->active)
		listener_accept(arg, l);
}

/* A UDP listener is registered like a stream one; its events echo datagrams. */
static void udp_event(struct rb_worker *w, struct rb_listener *l, uint32_t ev)
{
	struct reactor *r = R(w);

	rb__udp_run(w, l->udp, ev);
	if (!r->edge && rb__udp_interest(l->udp) != l->udp_interest) {
		l->udp_interest = rb__udp_interest(l->udp);
		r->ops->mod(r->poller, l->fd, l, l->udp_interest);
	}
}

/*
 * The stop deadline: what is still unsent is dropped. A socket that still
 * had bytes coming to it gets an RST (a FIN would pass a cut stream off as
 * complete) and is counted with its bytes, those we held and those still in
 * the kernel's send queue; one that was only waiting for the peer's FIN
 * closes cleanly.
 */
static void stop_deadline(struct rb_timer *t, void *arg)
{
	struct rb_worker *w = arg;
	struct reactor *r = R(w);

	(void)t;
	while (!rb_list_empty(&r->sessions)) {
		struct rb_session *s = rb_container_of(r->sessions.next, struct rb_session, all);

		for (unsigned i = 0; i < s->n_socks; i++) {
			const struct rb_flow *out = s->sock[i].out;
			rb__stop_deadline_close(w, s->sock[i].fd, out ? rb__flow_pending(out) : 0);
		}
		session_close(w, s, RB_CLOSE_SHUTDOWN);
	}
}

static void listener_unwatch(struct rb_worker *w, struct rb_listener *l)
{
	R(w)->ops->del(R(w)->poller, l->fd, l);
}

static void worker_begin_stop(struct rb_worker *w)
{
	struct reactor *r = R(w);
	struct rb_list *it, *next;

	if (!rb__worker_begin_stop(w, stop_deadline))
		return;
	/* Stop accepting for real: new peers are refused, not left in a backlog. */
	rb__worker_listeners_off(w, listener_unwatch);
	/* Stop passing new input on: flush what is buffered, then FIN,
	 * discarding input until the peer's FIN, then close each session. */
	for (it = r->sessions.next; it != &r->sessions; it = next) {
		struct rb_session *s = rb_container_of(it, struct rb_session, all);
		next = it->next;
		for (unsigned i = 0; i < s->n_flows; i++) {
			s->flow[i].flags |= FLOW_RD_EOF | FLOW_DISCARD;
			s->flow[i].flags &= ~FLOW_PIPE_WAIT;
		}
		if (s->queue == RB_Q_MEMWAIT)
			session_queue(w, s, RB_Q_NONE);
		session_run(w, s);
	}
}

static void free_grave(struct reactor *r)
{
	for (struct rb_list *it; (it = rb_list_pop(&r->grave));)
		free(rb_container_of(it, struct rb_session, qlink));
}

/*
 * Memory came back: run the sessions waiting for it, in the order they
 * began to wait, as many as there are chunks they may take (one holding no
 * chunk may use the reserve). Waking more would only send them back to
 * wait; waking one that cannot be served would spin.
 */
static void memwait_wake(struct rb_worker *w)
{
	struct reactor *r = R(w);
	const struct rb_pool *p = &w->pool;
	size_t cs = p->chunk_size, total, general;
	struct rb_list *it, *next;

	if (rb_list_empty(&r->memwait) || r->memwait_puts == p->puts)
		return;
	r->memwait_puts = p->puts;
	if (p->limit) {
		total = p->in_use < p->limit ? (p->limit - p->in_use) / cs : 0;
		general = p->in_use < p->limit - p->reserve
		                  ? (p->limit - p->reserve - p->in_use) / cs
		                  : 0;
	} else {
		total = general = SIZE_MAX; /* waiting for malloc: try them all */
	}
	for (it = r->memwait.next; it != &r->memwait && total > 0; it = next) {
		struct rb_session *s = rb_container_of(it, struct rb_session, qlink);
		next = it->next;
		if (general > 0)
			general--;
		else if (rb__session_chunks(s) > 0)
			continue; /* only the reserve is left, and it is not for this one */
		total--;
		session_queue(w, s, RB_Q_READY);
	}
}

/* Work left without waiting for the poller: 0; else the next timer's. */
static int64_t next_timeout(struct rb_worker *w)
{
	if (!rb_list_empty(&R(w)->ready))
		return 0;
	for (size_t i = 0; i < w->n_listeners; i++) {
		const struct rb_listener *l = &w->listeners[i];
		if (l->active && (l->pending || (l->udp && rb__udp_pending(l->udp))))
			return 0;
	}
	/* The common case reads no clock. */
	if (!w->timers.root)
		return -1;
	return rb__timers_timeout(&w->timers, rb__now_us());
}

static void dispatch(struct rb_worker *w, const struct rb_event *ev)
{
	struct rb_handle *h = ev->ptr;

	switch (h->kind) {
	case RB_H_SOCK:
		sock_event(w, (struct rb_sock *)(void *)h, ev->events);
		break;
	case RB_H_LISTENER: {
		struct rb_listener *l = (struct rb_listener *)(void *)h;
		if (l->active && l->udp)
			udp_event(w, l, ev->events);
		else if (l->active)
			listener_accept(w, l);
		break;
	}
	case RB_H_CONTROL:
		if (rb__worker_control(w))
			worker_begin_stop(w);
		break;
	}
}

static int reactor_run(struct rb_worker *w)
{
	struct reactor *r = R(w);
	struct rb_event ev[EVENT_BATCH];
	struct rb_list snap;

	for (;;) {
		if (__atomic_load_n(&w->srv->stop_requested, __ATOMIC_RELAXED))
			worker_begin_stop(w);
		if (w->stopping && rb_list_empty(&r->sessions))
			break;
		int64_t timeout = next_timeout(w);
		/* About to sleep: give what the pool freed back to the system. */
		if (timeout != 0)
			rb_pool_trim(&w->pool);
		int n = r->ops->wait(r->poller, ev, EVENT_BATCH, timeout);
		if (n < 0) {
			if (n == -EINTR)
				continue;
			rb__log(RB_LOG_ERR, "%s wait: %s", r->ops->name, strerror(-n));
			return n;
		}
		RB_STAT_ADD(w, wakeups, 1);
		w->now_us = rb__now_us();
		RB_STAT_ADD(w, events, (uint64_t)n);
		for (int i = 0; i < n; i++)
			dispatch(w, &ev[i]);
		/* Sessions that still had input after their budget (rule 3). */
		rb_list_init(&snap);
		rb_list_splice_tail(&snap, &r->ready);
		for (struct rb_list *it; (it = rb_list_pop(&snap));) {
			struct rb_session *s = rb_container_of(it, struct rb_session, qlink);
			s->queue = RB_Q_NONE;
			session_run(w, s);
		}
		for (size_t i = 0; i < w->n_listeners; i++) {
			struct rb_listener *l = &w->listeners[i];
			if (l->active && l->udp && rb__udp_pending(l->udp))
				udp_event(w, l, 0);
			else if (l->active && l->pending)
				listener_accept(w, l);
		}
		if (w->timers.root)
			rb__timers_run(&w->timers, w->now_us, w);
		memwait_wake(w);
		__atomic_store_n(&w->st.chunks_allocated, w->pool.allocated, __ATOMIC_RELAXED);
		__atomic_store_n(&w->st.chunks_cached, (uint64_t)w->pool.n_free, __ATOMIC_RELAXED);
		__atomic_store_n(&w->st.chunks_live, w->pool.live, __ATOMIC_RELAXED);
		free_grave(r);
	}
	free_grave(r);
	return 0;
}

/* A poller for the worker, with the control eventfd and the listeners. */
static int reactor_worker_init(struct rb_worker *w)
{
	struct reactor *r = calloc(1, sizeof(*r));
	int err;

	if (!r)
		return -ENOMEM;
	w->model = r;
	r->ops = w->eng->poller;
	rb_list_init(&r->sessions);
	rb_list_init(&r->ready);
	rb_list_init(&r->memwait);
	rb_list_init(&r->grave);
	/* An eighth of the cap serves only sessions that hold no chunk, so
	 * peers that fill the rest cannot starve new ones (issue 9). */
	rb_pool_set_reserve(&w->pool, w->pool.limit / 8);
	err = r->ops->create(&r->poller, w->srv->cfg.trigger, 1024);
	if (err < 0)
		return err;
	r->edge = r->ops->is_edge(r->poller);
	if (w->srv->cfg.busy_poll_us && w->id == 0) {
		/* Reported once: accepted sockets get SO_BUSY_POLL regardless. */
		int bp = r->ops->busy_poll ? r->ops->busy_poll(r->poller, w->srv->cfg.busy_poll_us)
		                           : -EOPNOTSUPP;
		rb__log(RB_LOG_INFO, "busy poll %u us: sockets yes, %s %s%s",
		        w->srv->cfg.busy_poll_us, r->ops->name, bp == 0 ? "yes" : "no",
		        bp == 0 ? "" : " (kernel before 6.9?)");
	} else if (w->srv->cfg.busy_poll_us && r->ops->busy_poll) {
		r->ops->busy_poll(r->poller, w->srv->cfg.busy_poll_us);
	}
	r->ctl_h.kind = RB_H_CONTROL;
	err = r->ops->add(r->poller, w->ctl_fd, &r->ctl_h, RB_READ);
	if (err < 0)
		return err;
	for (size_t i = 0; i < w->n_listeners; i++) {
		struct rb_listener *l = &w->listeners[i];
		if (l->is_udp) {
			l->udp = rb__udp_create(l->fd, l->port);
			if (!l->udp)
				return -ENOMEM;
			l->udp_interest = r->edge ? RB_READ | RB_WRITE : RB_READ;
			err = r->ops->add(r->poller, l->fd, l, l->udp_interest);
		} else {
			err = r->ops->add(r->poller, l->fd, l, RB_READ);
			rb__timer_init(&l->retry, listener_retry);
		}
		if (err < 0)
			return err;
		l->active = true;
	}
	return 0;
}

static void reactor_worker_fini(struct rb_worker *w)
{
	struct reactor *r = R(w);

	if (!r)
		return;
	while (!rb_list_empty(&r->sessions))
		session_close(w, rb_container_of(r->sessions.next, struct rb_session, all),
		              RB_CLOSE_SHUTDOWN);
	free_grave(r);
	for (size_t i = 0; i < w->n_listeners; i++) {
		rb__udp_destroy(w, w->listeners[i].udp);
		w->listeners[i].udp = NULL;
	}
	if (r->poller)
		r->ops->destroy(r->poller);
	free(r);
	w->model = NULL;
}

const struct rb_model_ops rb__reactor_model = {
        .worker_init = reactor_worker_init,
        .run = reactor_run,
        .worker_fini = reactor_worker_fini,
};
