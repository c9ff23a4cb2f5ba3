/* SPDX-License-Identifier: MIT */
/*
 * UDP echo on io_uring (issue 14): the completion engine's counterpart of
 * udp.c, with the same answers, guards and counters.
 *
 * Receive: one multishot IORING_OP_RECVMSG per socket, with buffer select
 * from a ring of its own (group `bgid`, beside the stream buffers). Each
 * datagram lands in one buffer as the kernel lays it out: a struct
 * io_uring_recvmsg_out, the source address (room for the template's
 * msg_namelen), then the payload. A buffer has room for any UDP payload
 * (65,527 bytes at most), so no datagram is truncated, as with udp.c's
 * slots; one that still is (MSG_TRUNC: a test hook shrinks the room) is not
 * answered and counts as a drop. The ring starts small and doubles when a
 * receive finds it empty, up to RB_UURING_UDP_BUFS buffers.
 *
 * A CQE without IORING_CQE_F_MORE ends the receive: it is armed again at
 * once, or, after ENOBUFS (no buffer was free), once a buffer is back. The
 * datagrams meanwhile wait in the socket's receive queue, where UDP's own
 * rules apply, as when the readiness engines stop reading.
 *
 * Send: each answer is a sendmsg from the buffer it arrived in, back to the
 * address the kernel wrote there; the buffer returns to the ring with the
 * send's CQE. At most RB_UURING_UDP_SENDS sends are in flight per socket;
 * a datagram that finds them all taken is dropped and counted
 * (datagram_drops), never queued: memory stays bounded whatever the peers
 * do. Sockets are non-blocking, so a send that finds no room waits on a
 * poll inside the ring, where a cancel ends it.
 *
 * Impairments (udp_impair.h, issue 13): the fate of each answer is drawn
 * by the code udp.c uses, in the same order from the same generator, so a
 * seed makes the same choices on both. A duplicate is a second sendmsg
 * from the same buffer (the buffer goes back when both are done); a
 * delayed answer is copied out (bounded, counted in buffered) and its
 * buffer goes back at once; the socket's timer submits its sendmsg, from
 * the copy, when it is due. A stop sends no delayed answer any more.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "internal.h"
#include "uring_probe.h"
#include "udp_impair.h"
#include "uring_udp.h"

struct rb_uring_udp_test rb__uring_udp_test;

/* Room for any UDP payload (65,507 bytes over IPv4, 65,527 over IPv6). */
#define UDP_ROOM     65536u
#define NAME_ROOM    ((unsigned)sizeof(struct sockaddr_storage))
#define INITIAL_BUFS 8u
/* An unexpected receive error: try again after this long, never spin. */
#define RETRY_MS 10

enum { UK_SOCK = 1, UK_SEND, UK_CANCEL, UK_DSEND };

/* What a user_data points at: every tagged object starts with its kind. */
struct ukind {
	uint8_t kind;
} __attribute__((aligned(8)));

struct usend {
	struct ukind k;
	struct usock_udp *s;
	uint16_t bid;
	uint32_t len;
	struct msghdr msg;
	struct iovec iov;
};

struct usock_udp {
	struct ukind k;
	struct rb_uudp *x;
	int fd;
	bool armed;     /* a receive is in flight */
	bool cancelled; /* ... and a cancel for it was submitted */
	bool waiting;   /* ended by ENOBUFS: armed again once a buffer is back */
	bool stopped;
	struct rb_udp_guard guard;
	struct msghdr tmpl; /* the layout the kernel writes each datagram in */
	unsigned gen_line;  /* chargen: the line the next answer starts with */
	unsigned n_send, n_free;
	uint16_t *free_slot;
	struct usend *send;
	struct rb_timer retry;
	struct rb_udp_imp imp; /* impairments: the generator, delayed answers */
	struct rb_list dsend;  /* delayed answers whose send is in flight */
};

struct rb_uudp {
	struct ukind cancel; /* the tag of cancel requests */
	struct rb_uudp_host h;
	struct io_uring_buf_ring *br;
	size_t br_len;
	unsigned nbufs, nalloc, nfree;
	uint32_t room;
	size_t bufsize;
	unsigned char **buf;
	uint8_t *bref; /* sends in flight from each buffer (a duplicate: two) */
	bool want_grow;
	unsigned sends_max;
	unsigned ops; /* receives, sends and cancels in flight */
	unsigned n_socks;
	struct usock_udp *socks;
	char detail[96];
};

#define TEST_ADD(field, n) __atomic_add_fetch(&rb__uring_udp_test.field, (n), __ATOMIC_RELAXED)

static inline uint64_t utag(const struct rb_uudp *x, const void *p)
{
	return (uint64_t)(uintptr_t)p | x->h.tag;
}

/* ---- buffers ---- */

static void buf_give(struct rb_uudp *x, uint16_t bid)
{
	io_uring_buf_ring_add(x->br, x->buf[bid], (unsigned)x->bufsize, bid,
	                      io_uring_buf_ring_mask(x->nbufs), 0);
	io_uring_buf_ring_advance(x->br, 1);
	x->nfree++;
}

static void buf_grow(struct rb_uudp *x, unsigned want)
{
	while (want-- > 0 && x->nalloc < x->nbufs) {
		unsigned char *b = malloc(x->bufsize);
		if (!b)
			break;
		x->buf[x->nalloc] = b;
		buf_give(x, (uint16_t)x->nalloc);
		x->nalloc++;
	}
}

/* ---- receive ---- */

static void sock_arm(struct rb_uudp *x, struct usock_udp *s)
{
	struct io_uring_sqe *sqe = x->h.get_sqe(x->h.ctx);

	io_uring_prep_recvmsg_multishot(sqe, s->fd, &s->tmpl, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = (uint16_t)x->h.bgid;
	io_uring_sqe_set_data64(sqe, utag(x, s));
	s->armed = true;
	s->cancelled = false;
	x->ops++;
}

static void sock_retry(struct rb_timer *t, void *arg)
{
	struct usock_udp *s = rb_container_of(t, struct usock_udp, retry);

	(void)arg;
	if (!s->stopped && !s->armed)
		sock_arm(s->x, s);
}

/* Answer one datagram (buffer bid, res bytes as the kernel laid them out). */
static void on_datagram(struct rb_worker *w, struct rb_uudp *x, struct usock_udp *s, uint16_t bid,
                        int res)
{
	struct io_uring_recvmsg_out *o = io_uring_recvmsg_validate(x->buf[bid], res, &s->tmpl);
	enum rb_service sv = w->srv->cfg.service;
	struct sockaddr *from;
	unsigned char *payload;
	void *base;
	uint32_t len;
	unsigned copies = 1;
	struct usend *m;

	RB_STAT_ADD(w, read_calls, 1);
	if (!o) {
		buf_give(x, bid);
		return;
	}
	RB_STAT_ADD(w, datagrams_in, 1);
	if ((o->flags & MSG_TRUNC) || o->namelen > s->tmpl.msg_namelen) {
		/* Not all of it is here: an echo would not be exact. */
		RB_STAT_ADD(w, datagram_drops, 1);
		buf_give(x, bid);
		return;
	}
	from = io_uring_recvmsg_name(o);
	payload = io_uring_recvmsg_payload(o, &s->tmpl);
	len = io_uring_recvmsg_payload_length(o, res, &s->tmpl);
	if (sv == RB_SERVICE_DISCARD) {
		/* Nothing goes back, so nothing to refuse or limit. */
		RB_STAT_ADD(w, bytes_in, len);
		buf_give(x, bid);
		return;
	}
	if (!rb__udp_guard_ok(w, &s->guard, from, w->srv->cfg.udp_rate ? rb__now_us() : 0) ||
	    (sv == RB_SERVICE_SOCKPERF && !rb__sockperf_answer(payload, len))) {
		buf_give(x, bid);
		return;
	}
	RB_STAT_ADD(w, bytes_in, len);
	if (sv == RB_SERVICE_CHARGEN) {
		/* The next lines of the stream, whatever arrived. */
		base = (void *)(rb__chargen_pattern() + (size_t)s->gen_line * RB_CHARGEN_LINE);
		len = RB_CHARGEN_UDP_LINES * RB_CHARGEN_LINE;
		s->gen_line = (s->gen_line + RB_CHARGEN_UDP_LINES) % RB_CHARGEN_LINES;
	} else {
		base = payload;
	}
	if (w->srv->impair) {
		const struct rb_impair *imp = rb__udp_imp_set(w, &s->imp);
		/* The clock now: the wake-up's may be older than the datagram
		 * (completions posted since, a set published since). */
		if (imp)
			copies = rb__udp_imp_answer(w, &s->imp, imp, from, o->namelen, base, len,
			                            sv != RB_SERVICE_CHARGEN, rb__now_us());
	}
	for (unsigned i = 0; i < copies; i++) {
		if (s->n_free == 0) {
			/* The bound: drop rather than queue without limit. */
			RB_STAT_ADD(w, datagram_drops, 1);
			continue;
		}
		m = &s->send[s->free_slot[--s->n_free]];
		m->bid = bid;
		m->iov.iov_base = base;
		m->iov.iov_len = len;
		m->len = len;
		m->msg = (struct msghdr){
		        .msg_name = from,
		        .msg_namelen = o->namelen,
		        .msg_iov = &m->iov,
		        .msg_iovlen = 1,
		};
		struct io_uring_sqe *sqe = x->h.get_sqe(x->h.ctx);
		io_uring_prep_sendmsg(sqe, s->fd, &m->msg, 0);
		io_uring_sqe_set_data64(sqe, utag(x, m));
		x->ops++;
		x->bref[bid]++;
		s->n_send++;
		if (s->n_send > __atomic_load_n(&rb__uring_udp_test.peak_sends, __ATOMIC_RELAXED))
			__atomic_store_n(&rb__uring_udp_test.peak_sends, s->n_send,
			                 __ATOMIC_RELAXED);
		RB_STAT_ADD(w, buffered, m->len);
	}
	RB_STAT_MAX(w, peak_buffered, w->st.buffered);
	if (!x->bref[bid])
		buf_give(x, bid); /* lost, delayed or dropped: nothing sends from it */
}

static void on_recv(struct rb_worker *w, struct rb_uudp *x, struct usock_udp *s, int res,
                    unsigned flags)
{
	if (flags & IORING_CQE_F_BUFFER) {
		uint16_t bid = (uint16_t)(flags >> IORING_CQE_BUFFER_SHIFT);
		x->nfree--;
		if (res >= 0)
			on_datagram(w, x, s, bid, res);
		else
			buf_give(x, bid);
	}
	if (flags & IORING_CQE_F_MORE)
		return;
	/* The receive has ended. */
	s->armed = false;
	x->ops--;
	if (s->stopped)
		return;
	if (res == -ENOBUFS) {
		TEST_ADD(enobufs, 1);
		x->want_grow = true;
		s->waiting = true;
		return;
	}
	if (res < 0) {
		rb__log(RB_LOG_DEBUG, "uring udp recvmsg: %s", strerror(-res));
		rb__timer_arm(&w->timers, &s->retry, rb__now_us() + rb__ms_to_us(RETRY_MS));
		return;
	}
	TEST_ADD(rearms, 1);
	sock_arm(x, s);
}

/* ---- send ---- */

static void on_send(struct rb_worker *w, struct rb_uudp *x, struct usend *m, int res)
{
	struct usock_udp *s = m->s;

	x->ops--;
	s->n_send--;
	RB_STAT_ADD(w, write_calls, 1);
	if (res >= 0) {
		RB_STAT_ADD(w, bytes_out, m->len);
		RB_STAT_ADD(w, datagrams_out, 1);
	} else {
		/* An unreachable or forbidden destination, or cancelled at the
		 * stop deadline: this datagram alone is lost. */
		RB_STAT_ADD(w, datagram_drops, 1);
	}
	RB_STAT_SUB(w, buffered, m->len);
	if (--x->bref[m->bid] == 0)
		buf_give(x, m->bid);
	s->free_slot[s->n_free++] = (uint16_t)(m - s->send);
}

/* A delayed answer is due (udp_impair.c's timer): its sendmsg, from the copy. */
static int delay_send(struct rb_worker *w, struct rb_udp_imp *ui, struct rb_dgram *d)
{
	struct usock_udp *s = rb_container_of(ui, struct usock_udp, imp);
	struct rb_uudp *x = s->x;
	struct io_uring_sqe *sqe = x->h.get_sqe(x->h.ctx);

	(void)w;
	d->kind = UK_DSEND;
	d->owner = s;
	rb_list_add_tail(&s->dsend, &d->link);
	io_uring_prep_sendmsg(sqe, s->fd, &d->msg, 0);
	io_uring_sqe_set_data64(sqe, utag(x, d));
	x->ops++;
	return 0;
}

static void on_dsend(struct rb_worker *w, struct rb_uudp *x, struct rb_dgram *d, int res)
{
	struct usock_udp *s = d->owner;

	x->ops--;
	RB_STAT_ADD(w, write_calls, 1);
	if (res >= 0) {
		RB_STAT_ADD(w, bytes_out, d->len);
		RB_STAT_ADD(w, datagrams_out, 1);
	} else {
		RB_STAT_ADD(w, datagram_drops, 1);
	}
	rb_list_del(&d->link);
	rb__udp_imp_done(w, &s->imp, d);
}

void rb__uring_udp_cqe(struct rb_worker *w, struct rb_uudp *x, void *p, int res, unsigned flags)
{
	switch (((struct ukind *)p)->kind) {
	case UK_SOCK:
		on_recv(w, x, p, res, flags);
		break;
	case UK_SEND:
		on_send(w, x, p, res);
		break;
	case UK_CANCEL:
		x->ops--;
		break;
	case UK_DSEND:
		on_dsend(w, x, p, res);
		break;
	default:
		break;
	}
}

void rb__uring_udp_poll(struct rb_worker *w, struct rb_uudp *x)
{
	(void)w;
	if (!x)
		return;
	if (x->want_grow) {
		x->want_grow = false;
		buf_grow(x, x->nalloc);
	}
	for (unsigned i = 0; i < x->n_socks && x->nfree > 0; i++) {
		struct usock_udp *s = &x->socks[i];
		if (s->waiting && !s->stopped && !s->armed) {
			s->waiting = false;
			TEST_ADD(rearms, 1);
			sock_arm(x, s);
		}
	}
}

/* ---- life cycle ---- */

int rb__uring_udp_create(struct rb_worker *w, const struct rb_uudp_host *h, struct rb_uudp **out)
{
	struct rb_uudp *x;
	unsigned n = 0;
	int rc;

	*out = NULL;
	for (size_t i = 0; i < w->n_listeners; i++)
		n += w->listeners[i].is_udp;
	if (!n)
		return 0;
	x = calloc(1, sizeof(*x));
	if (!x)
		return -ENOMEM;
	x->cancel.kind = UK_CANCEL;
	x->h = *h;
	x->nbufs = rb__uring_udp_test.bufs ? rb__uring_udp_test.bufs : RB_UURING_UDP_BUFS;
	x->room = rb__uring_udp_test.payload ? rb__uring_udp_test.payload : UDP_ROOM;
	x->bufsize = sizeof(struct io_uring_recvmsg_out) + NAME_ROOM + x->room;
	x->sends_max = rb__uring_udp_test.sends ? rb__uring_udp_test.sends : RB_UURING_UDP_SENDS;
	x->buf = calloc(x->nbufs, sizeof(*x->buf));
	x->bref = calloc(x->nbufs, sizeof(*x->bref));
	x->socks = calloc(n, sizeof(*x->socks));
	if (!x->buf || !x->bref || !x->socks) {
		rc = -ENOMEM;
		goto err;
	}
	for (size_t i = 0; i < w->n_listeners; i++) {
		const struct rb_listener *l = &w->listeners[i];
		struct usock_udp *s;
		if (!l->is_udp)
			continue;
		s = &x->socks[x->n_socks++];
		rb__udp_imp_init(&s->imp, delay_send);
		rb_list_init(&s->dsend);
		s->k.kind = UK_SOCK;
		s->x = x;
		s->fd = l->fd;
		s->guard.port = l->port;
		s->tmpl.msg_namelen = NAME_ROOM;
		rb__timer_init(&s->retry, sock_retry);
		s->send = calloc(x->sends_max, sizeof(*s->send));
		s->free_slot = calloc(x->sends_max, sizeof(*s->free_slot));
		if (!s->send || !s->free_slot) {
			rc = -ENOMEM;
			goto err;
		}
		for (unsigned j = 0; j < x->sends_max; j++) {
			s->send[j].k.kind = UK_SEND;
			s->send[j].s = s;
			s->free_slot[j] = (uint16_t)(x->sends_max - 1 - j);
		}
		s->n_free = x->sends_max;
	}
	rc = rb__uring_bufring_register(h->ring, x->nbufs, h->bgid, 0, &x->br, &x->br_len);
	if (rc < 0)
		goto err;
	snprintf(x->detail, sizeof(x->detail), "udp: multishot recvmsg, up to %u buffers of %zu",
	         x->nbufs, x->bufsize);
	*out = x;
	return 0;
err:
	rb__uring_udp_destroy(w, x);
	return rc;
}

void rb__uring_udp_start(struct rb_worker *w, struct rb_uudp *x)
{
	(void)w;
	if (!x)
		return;
	buf_grow(x, INITIAL_BUFS < x->nbufs ? INITIAL_BUFS : x->nbufs);
	for (unsigned i = 0; i < x->n_socks; i++)
		sock_arm(x, &x->socks[i]);
}

static void cancel(struct rb_uudp *x, struct io_uring_sqe *sqe)
{
	io_uring_sqe_set_data64(sqe, utag(x, &x->cancel));
	x->ops++;
}

void rb__uring_udp_stop(struct rb_worker *w, struct rb_uudp *x, bool hard)
{
	if (!x)
		return;
	for (unsigned i = 0; i < x->n_socks; i++) {
		struct usock_udp *s = &x->socks[i];
		s->stopped = true;
		s->waiting = false;
		rb__timer_cancel(&w->timers, &s->retry);
		rb__udp_imp_stop(w, &s->imp);
		if (s->armed && !s->cancelled) {
			struct io_uring_sqe *sqe = x->h.get_sqe(x->h.ctx);
			io_uring_prep_cancel64(sqe, utag(x, s), 0);
			cancel(x, sqe);
			s->cancelled = true;
		}
		if (hard && (s->n_send || !rb_list_empty(&s->dsend))) {
			struct io_uring_sqe *sqe = x->h.get_sqe(x->h.ctx);
			io_uring_prep_cancel_fd(sqe, s->fd, IORING_ASYNC_CANCEL_ALL);
			cancel(x, sqe);
		}
	}
}

bool rb__uring_udp_idle(const struct rb_uudp *x)
{
	return !x || x->ops == 0;
}

const char *rb__uring_udp_detail(const struct rb_uudp *x)
{
	return x ? x->detail : "";
}

void rb__uring_udp_destroy(struct rb_worker *w, struct rb_uudp *x)
{
	if (!x)
		return;
	for (unsigned i = 0; i < x->n_socks; i++) {
		struct usock_udp *s = &x->socks[i];
		rb__timer_cancel(&w->timers, &s->retry);
		rb__udp_imp_fini(w, &s->imp);
		/* Only when the ring is gone: their CQEs will not come. */
		for (struct rb_list *it; (it = rb_list_pop(&s->dsend));)
			rb__udp_imp_done(w, &s->imp, rb_container_of(it, struct rb_dgram, link));
		rb__udp_guard_fini(&s->guard);
		free(s->send);
		free(s->free_slot);
	}
	if (x->br)
		munmap(x->br, x->br_len);
	for (unsigned i = 0; i < x->nalloc; i++)
		free(x->buf[i]);
	free(x->buf);
	free(x->bref);
	free(x->socks);
	free(x);
}
