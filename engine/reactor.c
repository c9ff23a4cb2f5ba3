/* SPDX-License-Identifier: MIT */
/*
 * The readiness model: one echo state machine, written once, driven by any
 * poller (edge- or level-triggered). See DESIGN.md, "The edge-triggered
 * rules"; the rule numbers are quoted where the code implements them.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

/* iovecs per readv: enough to fill a few chunks in one call. */
#define READ_IOV 4
#define EVENT_BATCH 256

static void conn_run(struct rb_worker *w, struct rb_conn *c);

static size_t conn_cap(const struct rb_worker *w)
{
	return w->srv->cfg.conn_buffer;
}

/* Resume reading below half the cap, so a paused connection does not
 * flap between paused and running on every small write. */
static size_t conn_lowat(const struct rb_worker *w)
{
	return w->srv->cfg.conn_buffer / 2;
}

/* Bytes read and not yet echoed: in the chain (writev) or the pipe (splice). */
static size_t conn_pending(const struct rb_conn *c)
{
	return c->chain.bytes + c->pipe_bytes;
}

static struct rb_list *queue_list(struct rb_worker *w, enum rb_conn_queue q)
{
	switch (q) {
	case RB_Q_READY:
		return &w->ready;
	case RB_Q_MEMWAIT:
		return &w->memwait;
	case RB_Q_GRAVE:
		return &w->grave;
	case RB_Q_NONE:
		break;
	}
	return NULL;
}

/*
 * The only place a connection changes lists: off the one it is on, onto
 * the one asked for (RB_Q_NONE: none). The graveyard is final.
 */
static void conn_queue(struct rb_worker *w, struct rb_conn *c, enum rb_conn_queue q)
{
	assert(c->queue != RB_Q_GRAVE);
	assert((c->queue == RB_Q_NONE) == rb_list_unlinked(&c->qlink));
	if (c->queue == q)
		return;
	if (c->queue != RB_Q_NONE)
		rb_list_del(&c->qlink);
	c->queue = q;
	if (q != RB_Q_NONE)
		rb_list_add_tail(queue_list(w, q), &c->qlink);
}

/* Run again after the others. One waiting for memory stays where it is:
 * the memory wake-up runs it, and reading could not progress before. */
static void ready_push(struct rb_worker *w, struct rb_conn *c)
{
	if ((c->flags & CONN_CLOSED) || c->queue == RB_Q_MEMWAIT)
		return;
	conn_queue(w, c, RB_Q_READY);
}

/* Reading needs a chunk the memory cap does not allow now. */
static void memwait_push(struct rb_worker *w, struct rb_conn *c)
{
	conn_queue(w, c, RB_Q_MEMWAIT);
	RB_STAT_ADD(w, memory_waits, 1);
}

/* Input is wanted: not at EOF, not paused at a cap, not waiting for memory,
 * or stopping and still discarding until the peer's FIN. */
static bool conn_wants_input(const struct rb_conn *c)
{
	if (c->flags & CONN_DISCARD)
		return !(c->flags & CONN_PEER_EOF);
	return !(c->flags & (CONN_RD_EOF | CONN_PAUSED | CONN_PIPE_WAIT)) &&
	       c->queue != RB_Q_MEMWAIT;
}

/* Level-triggered pollers must be told what we want; edge ones never are (rule 1). */
static void conn_set_interest(struct rb_worker *w, struct rb_conn *c)
{
	uint32_t want = 0;

	if (w->edge)
		return;
	if (conn_wants_input(c))
		want |= RB_READ;
	if (conn_pending(c) > 0)
		want |= RB_WRITE;
	if (want != c->interest) {
		int err = w->ops->mod(w->poller, c->fd, c, want);
		if (err < 0)
			rb__log(RB_LOG_ERR, "poller mod fd %d: %s", c->fd, strerror(-err));
		c->interest = want;
	}
}

static void conn_close(struct rb_worker *w, struct rb_conn *c, bool error)
{
	if (c->flags & CONN_CLOSED)
		return;
	w->ops->del(w->poller, c->fd, c);
	close(c->fd);
	RB_STAT_SUB(w, buffered, conn_pending(c));
	rb_chain_release(&w->pool, &c->chain);
	rb__pipe_put(w, c, true);
	rb_list_del(&c->all);
	/* Freed after the whole event batch: later events for it are stale (rule 7). */
	c->flags = CONN_CLOSED;
	conn_queue(w, c, RB_Q_GRAVE);
	RB_STAT_SUB(w, active, 1);
	RB_STAT_ADD(w, closed, 1);
	if (error)
		RB_STAT_ADD(w, resets, 1);
}

/* Everything echoed after the peer's FIN: send ours, then close (rule 6). */
static void conn_finish(struct rb_worker *w, struct rb_conn *c)
{
	shutdown(c->fd, SHUT_WR);
	conn_close(w, c, false);
}

/*
 * Write from the head of the chain until it is empty or the socket is full
 * (rule 4). Returns -1 if the connection was closed.
 */
static int conn_flush_chain(struct rb_worker *w, struct rb_conn *c)
{
	while (c->chain.bytes > 0 && (c->flags & CONN_CAN_WRITE)) {
		int n = rb_chain_write_iov(&w->pool, &c->chain, w->iov, IOV_MAX);
		size_t want = 0;
		ssize_t r;

		for (int i = 0; i < n; i++)
			want += w->iov[i].iov_len;
		/* sendmsg is writev with flags: MSG_NOSIGNAL, so a peer that left
		 * costs an EPIPE, never a signal, even if the embedder kept SIGPIPE. */
		struct msghdr mh = {.msg_iov = w->iov, .msg_iovlen = (size_t)n};
		r = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		RB_STAT_ADD(w, write_calls, 1);
		if (r >= 0) {
			rb_chain_consume(&w->pool, &c->chain, (size_t)r);
			RB_STAT_ADD(w, bytes_out, (uint64_t)r);
			RB_STAT_SUB(w, buffered, (uint64_t)r);
			/* A short write means the send buffer is full: wait for EPOLLOUT. */
			if ((size_t)r < want)
				c->flags &= ~CONN_CAN_WRITE;
			continue;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN) {
			c->flags &= ~CONN_CAN_WRITE;
			break;
		}
		conn_close(w, c, true);
		return -1;
	}
	/* Rule 5: no new edge will come for input already queued in the kernel,
	 * so resume reading ourselves once below the low-water mark. */
	if ((c->flags & CONN_PAUSED) && c->chain.bytes <= conn_lowat(w)) {
		c->flags &= ~CONN_PAUSED;
		if (c->flags & CONN_CAN_READ)
			ready_push(w, c);
	}
	return 0;
}

/*
 * Read into the chain's tail until EAGAIN, a short read, EOF, the budget
 * or the cap (rule 2), echoing after every read (rule 4). Returns -1 if the
 * connection was closed.
 */
static int conn_read_chain(struct rb_worker *w, struct rb_conn *c)
{
	size_t budget = w->srv->cfg.read_budget;
	size_t cap = conn_cap(w);
	struct iovec iov[READ_IOV];

	while ((c->flags & CONN_CAN_READ) && conn_wants_input(c)) {
		size_t room = cap - c->chain.bytes, want = 0;
		ssize_t r;
		int n;

		/* Rule 8: never read into a full buffer (0 would look like EOF). */
		if (c->chain.bytes >= cap) {
			c->flags |= CONN_PAUSED;
			RB_STAT_ADD(w, pauses, 1);
			break;
		}
		if (budget == 0) {
			/* Rule 3: fairness. Come back after the others had their turn. */
			ready_push(w, c);
			RB_STAT_ADD(w, requeues, 1);
			break;
		}
		n = rb_chain_read_iov(&w->pool, &c->chain, iov, READ_IOV,
				      room < budget ? room : budget);
		if (n < 0) {
			memwait_push(w, c);
			break;
		}
		for (int i = 0; i < n; i++)
			want += iov[i].iov_len;
		r = readv(c->fd, iov, n);
		RB_STAT_ADD(w, read_calls, 1);
		if (r > 0) {
			rb_chain_commit(&w->pool, &c->chain, (size_t)r);
			RB_STAT_ADD(w, bytes_in, (uint64_t)r);
			RB_STAT_ADD(w, buffered, (uint64_t)r);
			RB_STAT_MAX(w, peak_buffered, w->st.buffered);
			RB_STAT_MAX(w, peak_conn_buffered, c->chain.bytes);
			budget -= (size_t)r;
			/* A short read on a stream socket means it is drained, unless the
			 * peer's FIN is already known: its edge came with this data, so
			 * no later edge would report the EOF (nginx's pending_eof). */
			if ((size_t)r < want && !(c->flags & CONN_PEER_HUP))
				c->flags &= ~CONN_CAN_READ;
			if (conn_flush_chain(w, c) < 0)
				return -1;
			continue;
		}
		rb_chain_commit(&w->pool, &c->chain, 0);
		if (r == 0) {
			c->flags |= CONN_RD_EOF | CONN_PEER_EOF;
			c->flags &= ~CONN_CAN_READ;
			break;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN) {
			c->flags &= ~CONN_CAN_READ;
			break;
		}
		conn_close(w, c, true);
		return -1;
	}
	return 0;
}

/*
 * splice: pipe -> socket until the pipe is empty or the socket is full. Any
 * progress lets a read that stopped on the pipe (full, or EAGAIN that could
 * have meant "out of pipe slots") try again. Returns -1 if closed.
 */
static int conn_flush_pipe(struct rb_worker *w, struct rb_conn *c)
{
	bool progress = false;

	while (c->pipe_bytes > 0 && (c->flags & CONN_CAN_WRITE)) {
		ssize_t r = splice(c->pipe_rd, NULL, c->fd, NULL, c->pipe_bytes,
				   SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
		RB_STAT_ADD(w, write_calls, 1);
		RB_STAT_ADD(w, splice_calls, 1);
		if (r > 0) {
			c->pipe_bytes -= (size_t)r;
			RB_STAT_ADD(w, bytes_out, (uint64_t)r);
			RB_STAT_ADD(w, bytes_spliced, (uint64_t)r);
			RB_STAT_SUB(w, buffered, (uint64_t)r);
			progress = true;
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EAGAIN) {
			c->flags &= ~CONN_CAN_WRITE;
			break;
		}
		/* An error, or 0 from a pipe we believe holds bytes: give up on it. */
		conn_close(w, c, true);
		return -1;
	}
	if (progress && ((c->flags & CONN_PIPE_WAIT) ||
			 ((c->flags & CONN_PAUSED) && c->pipe_bytes <= c->pipe_cap / 2))) {
		c->flags &= ~(CONN_PIPE_WAIT | CONN_PAUSED);
		if (c->flags & CONN_CAN_READ)
			ready_push(w, c);
	}
	return 0;
}

/*
 * splice: socket -> pipe, echoing after every move, until EAGAIN, EOF, the
 * budget or a full pipe. Occupancy is tracked here because EAGAIN alone
 * cannot tell "socket empty" from "pipe full". Returns -1 if closed.
 */
static int conn_read_pipe(struct rb_worker *w, struct rb_conn *c)
{
	size_t budget = w->srv->cfg.read_budget;

	while ((c->flags & CONN_CAN_READ) &&
	       !(c->flags & (CONN_RD_EOF | CONN_PAUSED | CONN_PIPE_WAIT))) {
		size_t room = c->pipe_cap - c->pipe_bytes;
		ssize_t r;

		if (room == 0) {
			c->flags |= CONN_PAUSED;
			RB_STAT_ADD(w, pauses, 1);
			break;
		}
		if (budget == 0) {
			ready_push(w, c);
			RB_STAT_ADD(w, requeues, 1);
			break;
		}
		r = splice(c->fd, NULL, c->pipe_wr, NULL, room < budget ? room : budget,
			   SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
		RB_STAT_ADD(w, read_calls, 1);
		RB_STAT_ADD(w, splice_calls, 1);
		if (r > 0) {
			c->pipe_bytes += (size_t)r;
			RB_STAT_ADD(w, bytes_in, (uint64_t)r);
			RB_STAT_ADD(w, buffered, (uint64_t)r);
			RB_STAT_MAX(w, peak_buffered, w->st.buffered);
			RB_STAT_MAX(w, peak_conn_buffered, c->pipe_bytes);
			budget -= (size_t)r;
			/* No short-read shortcut: a short splice may mean the pipe ran
			 * out of slots, not that the socket is empty. */
			if (conn_flush_pipe(w, c) < 0)
				return -1;
			continue;
		}
		if (r == 0) {
			c->flags |= CONN_RD_EOF | CONN_PEER_EOF;
			c->flags &= ~CONN_CAN_READ;
			break;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN) {
			if (c->pipe_bytes == 0)
				c->flags &= ~CONN_CAN_READ; /* the pipe had room: socket empty */
			else {
				/* Ambiguous: socket empty, or the pipe out of page slots
				 * before bytes. Either way wait for a write to drain it. */
				c->flags |= CONN_PIPE_WAIT;
				RB_STAT_ADD(w, pauses, 1);
			}
			break;
		}
		conn_close(w, c, true);
		return -1;
	}
	return 0;
}

static int conn_flush(struct rb_worker *w, struct rb_conn *c)
{
	return c->pipe_rd >= 0 ? conn_flush_pipe(w, c) : conn_flush_chain(w, c);
}

/*
 * splice mode takes a pipe from the worker's cache only while there are
 * bytes to move (an idle connection holds two descriptors fewer), and gives
 * it back once drained. If none can be had (descriptors ran out), this
 * round of reading goes through the chunk pool and writev instead.
 */
static void conn_take_pipe(struct rb_worker *w, struct rb_conn *c)
{
	unsigned sup;
	int err;

	if (w->srv->cfg.copy != RB_COPY_SPLICE || c->pipe_rd >= 0 || c->chain.bytes > 0)
		return;
	err = rb__pipe_get(w, c);
	if (err == 0)
		return;
	RB_STAT_ADD(w, splice_fallbacks, 1);
	if (rb__ratelimit_ok(&w->rl_pipe, &sup))
		rb__log(RB_LOG_ERR, "no pipe for fd %d (%s): using writev (%u more suppressed)",
			c->fd, strerror(-err), sup);
}

/*
 * Stopping: read and drop whatever the peer still sends, until its FIN.
 * Closing a socket with unread input makes the kernel send an RST and drop
 * the echo still queued for the peer (nginx's lingering close). Returns -1
 * if the connection was closed.
 */
static int conn_discard(struct rb_worker *w, struct rb_conn *c)
{
	size_t budget = w->srv->cfg.read_budget;

	while ((c->flags & CONN_CAN_READ) && !(c->flags & CONN_PEER_EOF)) {
		ssize_t r;

		if (budget == 0) {
			ready_push(w, c);
			break;
		}
		r = recv(c->fd, w->scratch, sizeof(w->scratch), MSG_DONTWAIT);
		RB_STAT_ADD(w, read_calls, 1);
		if (r > 0) {
			RB_STAT_ADD(w, stop_discarded, (uint64_t)r);
			budget = (size_t)r < budget ? budget - (size_t)r : 0;
			continue;
		}
		if (r == 0) {
			c->flags |= CONN_PEER_EOF;
			c->flags &= ~CONN_CAN_READ;
			break;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN) {
			c->flags &= ~CONN_CAN_READ;
			break;
		}
		conn_close(w, c, true);
		return -1;
	}
	return 0;
}

static int conn_read(struct rb_worker *w, struct rb_conn *c)
{
	if (c->flags & CONN_DISCARD)
		return conn_discard(w, c);
	if (!(c->flags & CONN_CAN_READ) || !conn_wants_input(c))
		return 0;
	conn_take_pipe(w, c);
	return c->pipe_rd >= 0 ? conn_read_pipe(w, c) : conn_read_chain(w, c);
}

static void conn_run(struct rb_worker *w, struct rb_conn *c)
{
	if (c->flags & CONN_CLOSED)
		return;
	if (conn_pending(c) > 0 && conn_flush(w, c) < 0)
		return;
	if (conn_read(w, c) < 0)
		return;
	if ((c->flags & CONN_RD_EOF) && conn_pending(c) == 0) {
		/* Everything echoed. Stopping, our FIN goes now and the socket
		 * stays open, discarding, until the peer's FIN (or the deadline). */
		if ((c->flags & (CONN_DISCARD | CONN_PEER_EOF)) == CONN_DISCARD) {
			if (!(c->flags & CONN_WR_SHUT)) {
				shutdown(c->fd, SHUT_WR);
				c->flags |= CONN_WR_SHUT;
			}
		} else {
			conn_finish(w, c);
			return;
		}
	}
	if (c->pipe_rd >= 0 && c->pipe_bytes == 0)
		rb__pipe_put(w, c, false);
	conn_set_interest(w, c);
}

/*
 * The socket is shut both ways (EPOLLHUP/EPOLLERR, POLLHUP/POLLERR): after a
 * peer's RST, or after our FIN and the peer's. Nothing more can be sent, so
 * it is handled now, whatever the connection was waiting for: a connection
 * waiting for memory must not keep reporting a hang-up nobody looks at
 * (a level-triggered spin, issue 9).
 */
static void conn_hangup(struct rb_worker *w, struct rb_conn *c)
{
	int err = 0;
	socklen_t len = sizeof(err);

	getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
	/* Lingering after our FIN, a hang-up is the peer's FIN: a clean end. */
	conn_close(w, c, err != 0 || !(c->flags & CONN_WR_SHUT));
}

static void conn_event(struct rb_worker *w, struct rb_conn *c, uint32_t ev)
{
	if (c->flags & CONN_CLOSED)
		return; /* stale: closed earlier in this batch (rule 7) */
	if (ev & RB_ERR) {
		conn_hangup(w, c);
		return;
	}
	if (ev & RB_HUP)
		c->flags |= CONN_PEER_HUP;
	if (ev & (RB_READ | RB_HUP))
		c->flags |= CONN_CAN_READ;
	if (ev & (RB_WRITE | RB_HUP))
		c->flags |= CONN_CAN_WRITE;
	conn_run(w, c);
}

static void conn_new(struct rb_worker *w, int fd, bool tcp)
{
	struct rb_conn *c;
	uint32_t events = w->edge ? (RB_READ | RB_WRITE) : RB_READ;
	int err;

	if (w->ops->max_fd >= 0 && fd > w->ops->max_fd) {
		rb__refuse(w, fd, -EMFILE);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		rb__refuse(w, fd, -ENOMEM);
		return;
	}
	c->h.kind = RB_H_CONN;
	c->fd = fd;
	c->flags = CONN_CAN_WRITE;
	c->interest = events;
	c->pipe_rd = c->pipe_wr = -1;
	rb_chain_init(&c->chain);
	rb_list_init(&c->qlink);
	rb__tune_accepted(w, fd, tcp);
	err = w->ops->add(w->poller, fd, c, events);
	if (err < 0) {
		free(c);
		rb__refuse(w, fd, err);
		return;
	}
	rb_list_init(&c->all);
	rb_list_add_tail(&w->conns, &c->all);
	RB_STAT_ADD(w, accepted, 1);
	RB_STAT_ADD(w, active, 1);
}

static void listener_accept(struct rb_worker *w, struct rb_listener *l)
{
	unsigned budget = w->srv->cfg.accept_budget;

	l->pending = false;
	for (unsigned i = 0; i < budget; i++) {
		int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0) {
			conn_new(w, fd, l->tcp);
			continue;
		}
		switch (rb__accept_error(w, l->fd, errno)) {
		case RB_ACCEPT_RETRY:
			continue;
		case RB_ACCEPT_IDLE:
			return;
		case RB_ACCEPT_BACKOFF:
			/* Not pending: nothing runs it before its timer. */
			rb__timer_arm(&w->timers, &l->retry, rb__now_ms() + RB_ACCEPT_BACKOFF_MS);
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
	rb__udp_run(w, l->udp, ev);
	if (!w->edge && rb__udp_interest(l->udp) != l->udp_interest) {
		l->udp_interest = rb__udp_interest(l->udp);
		w->ops->mod(w->poller, l->fd, l, l->udp_interest);
	}
}

static void worker_stop_deadline(struct rb_timer *t, void *arg);

static void worker_begin_stop(struct rb_worker *w)
{
	struct rb_list *it, *next;

	if (!rb__worker_begin_stop(w, worker_stop_deadline))
		return;
	for (size_t i = 0; i < w->n_listeners; i++) {
		struct rb_listener *l = &w->listeners[i];
		if (l->active)
			w->ops->del(w->poller, l->fd, l);
		l->active = false;
		l->pending = false;
		rb__timer_cancel(&w->timers, &l->retry);
	}
	/* Stop accepting for real: new peers are refused, not left in a backlog. */
	rb__worker_release_listeners(w);
	/* Stop echoing new input: flush what is queued, then FIN, discarding
	 * input until the peer's FIN, then close each connection. */
	for (it = w->conns.next; it != &w->conns; it = next) {
		struct rb_conn *c = rb_container_of(it, struct rb_conn, all);
		next = it->next;
		c->flags |= CONN_RD_EOF | CONN_DISCARD;
		c->flags &= ~CONN_PIPE_WAIT;
		if (c->queue == RB_Q_MEMWAIT)
			conn_queue(w, c, RB_Q_NONE);
		conn_run(w, c);
	}
}

/*
 * The stop deadline: what is still unsent is dropped. A connection that had
 * echo left gets an RST (a FIN would pass a cut stream off as complete) and
 * is counted with its bytes, those we held and those still in the kernel's
 * send queue; one that was only waiting for the peer's FIN closes cleanly.
 */
static void worker_stop_deadline(struct rb_timer *t, void *arg)
{
	struct rb_worker *w = arg;

	(void)t;
	while (!rb_list_empty(&w->conns)) {
		struct rb_conn *c = rb_container_of(w->conns.next, struct rb_conn, all);

		rb__stop_deadline_close(w, c->fd, conn_pending(c));
		conn_close(w, c, false);
	}
}

static void control_event(struct rb_worker *w)
{
	if (rb__worker_control(w))
		worker_begin_stop(w);
}

static void free_grave(struct rb_worker *w)
{
	while (!rb_list_empty(&w->grave)) {
		struct rb_conn *c = rb_container_of(w->grave.next, struct rb_conn, qlink);
		rb_list_del(&c->qlink);
		free(c);
	}
}

/*
 * Memory came back: run the connections waiting for it, in the order they
 * began to wait, as many as there are chunks they may take (one holding no
 * chunk may use the reserve). Waking more would only send them back to
 * wait; waking one that cannot be served would spin.
 */
static void memwait_wake(struct rb_worker *w)
{
	const struct rb_pool *p = &w->pool;
	size_t cs = p->chunk_size, total, general;
	struct rb_list *it, *next;

	if (rb_list_empty(&w->memwait) || w->memwait_puts == p->puts)
		return;
	w->memwait_puts = p->puts;
	if (p->limit) {
		total = p->in_use < p->limit ? (p->limit - p->in_use) / cs : 0;
		general = p->in_use < p->limit - p->reserve
				  ? (p->limit - p->reserve - p->in_use) / cs
				  : 0;
	} else {
		total = general = SIZE_MAX; /* waiting for malloc: try them all */
	}
	for (it = w->memwait.next; it != &w->memwait && total > 0; it = next) {
		struct rb_conn *c = rb_container_of(it, struct rb_conn, qlink);
		next = it->next;
		if (c->chain.chunks == 0) {
			if (general > 0)
				general--;
		} else if (general > 0) {
			general--;
		} else {
			continue;
		}
		total--;
		conn_queue(w, c, RB_Q_READY);
	}
}

/* Work left without waiting for the poller: 0; else the next timer's. */
static int next_timeout(struct rb_worker *w)
{
	if (!rb_list_empty(&w->ready))
		return 0;
	for (size_t i = 0; i < w->n_listeners; i++) {
		const struct rb_listener *l = &w->listeners[i];
		if (l->active && (l->pending || (l->udp && rb__udp_pending(l->udp))))
			return 0;
	}
	/* The common case reads no clock. */
	if (!w->timers.root)
		return -1;
	return rb__timers_timeout(&w->timers, rb__now_ms());
}

static int reactor_run(struct rb_worker *w)
{
	struct rb_event ev[EVENT_BATCH];
	struct rb_list snap;

	for (;;) {
		if (__atomic_load_n(&w->srv->stop_requested, __ATOMIC_RELAXED))
			worker_begin_stop(w);
		if (w->stopping && rb_list_empty(&w->conns))
			break;
		int timeout = next_timeout(w);
		/* About to sleep: give what the pool freed back to the system. */
		if (timeout != 0)
			rb_pool_trim(&w->pool);
		int n = w->ops->wait(w->poller, ev, EVENT_BATCH, timeout);
		if (n < 0) {
			if (n == -EINTR)
				continue;
			rb__log(RB_LOG_ERR, "%s wait: %s", w->ops->name, strerror(-n));
			return n;
		}
		RB_STAT_ADD(w, wakeups, 1);
		for (int i = 0; i < n; i++) {
			struct rb_handle *h = ev[i].ptr;
			switch (h->kind) {
			case RB_H_CONN:
				conn_event(w, (struct rb_conn *)(void *)h, ev[i].events);
				break;
			case RB_H_LISTENER: {
				struct rb_listener *l = (struct rb_listener *)(void *)h;
				if (l->active && l->udp)
					udp_event(w, l, ev[i].events);
				else if (l->active)
					listener_accept(w, l);
				break;
			}
			case RB_H_CONTROL:
				control_event(w);
				break;
			}
		}
		/* Connections that still had input after their budget (rule 3). */
		rb_list_init(&snap);
		rb_list_splice_tail(&snap, &w->ready);
		while (!rb_list_empty(&snap)) {
			struct rb_conn *c = rb_container_of(snap.next, struct rb_conn, qlink);
			rb_list_del(&c->qlink);
			c->queue = RB_Q_NONE;
			conn_run(w, c);
		}
		for (size_t i = 0; i < w->n_listeners; i++) {
			struct rb_listener *l = &w->listeners[i];
			if (l->active && l->udp && rb__udp_pending(l->udp))
				udp_event(w, l, 0);
			else if (l->active && l->pending)
				listener_accept(w, l);
		}
		if (w->timers.root)
			rb__timers_run(&w->timers, rb__now_ms(), w);
		memwait_wake(w);
		__atomic_store_n(&w->st.chunks_allocated, w->pool.allocated, __ATOMIC_RELAXED);
		__atomic_store_n(&w->st.chunks_cached, (uint64_t)w->pool.n_free, __ATOMIC_RELAXED);
		__atomic_store_n(&w->st.chunks_live, w->pool.live, __ATOMIC_RELAXED);
		free_grave(w);
	}
	return 0;
}

/* Register the control eventfd and the listeners with a new poller. */
static int reactor_worker_init(struct rb_worker *w)
{
	int err;

	w->ops = w->eng->poller;
	err = w->ops->create(&w->poller, w->srv->cfg.trigger, 1024);

	/* An eighth of the cap serves only connections that hold no chunk, so
	 * peers that fill the rest cannot starve new ones (issue 9). */
	rb_pool_set_reserve(&w->pool, w->pool.limit / 8);

	if (err < 0)
		return err;
	w->edge = w->ops->is_edge(w->poller);
	w->ctl_h.kind = RB_H_CONTROL;
	err = w->ops->add(w->poller, w->ctl_fd, &w->ctl_h, RB_READ);
	if (err < 0)
		return err;
	for (size_t i = 0; i < w->n_listeners; i++) {
		struct rb_listener *l = &w->listeners[i];
		if (l->is_udp) {
			l->udp = rb__udp_create(l->fd, l->port);
			if (!l->udp)
				return -ENOMEM;
			l->udp_interest = w->edge ? RB_READ | RB_WRITE : RB_READ;
			err = w->ops->add(w->poller, l->fd, l, l->udp_interest);
		} else {
			err = w->ops->add(w->poller, l->fd, l, RB_READ);
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
	while (!rb_list_empty(&w->conns))
		conn_close(w, rb_container_of(w->conns.next, struct rb_conn, all), false);
	free_grave(w);
	for (size_t i = 0; i < w->n_listeners; i++) {
		rb__udp_destroy(w, w->listeners[i].udp);
		w->listeners[i].udp = NULL;
	}
	if (w->poller)
		w->ops->destroy(w->poller);
	w->poller = NULL;
}

const struct rb_model_ops rb__reactor_model = {
	.worker_init = reactor_worker_init,
	.run = reactor_run,
	.worker_fini = reactor_worker_fini,
};
