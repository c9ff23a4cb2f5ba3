/* SPDX-License-Identifier: MIT */
/*
 * The completion model on io_uring (issue 6; DESIGN.md, "io_uring").
 *
 * One ring per worker. Listeners get a multishot accept; connections receive
 * into a per-worker ring of provided buffers (pool chunks, added lazily) and
 * send back with exactly one send in flight per connection, covering every
 * buffer queued at that moment. A buffer goes back to the ring only when all
 * its bytes have been sent, so the stream is never reordered or overwritten.
 *
 * The per-connection cap is exact, as in the reactor: a multishot receive is
 * armed with a byte limit (sqe->optlen, honoured by newer kernels) that keeps
 * it from landing past the cap, and the last bytes below the cap are taken
 * with single-shot receives of exactly the room left. Kernels without the
 * limit get single-shot receives only: a multishot receive cannot be stopped
 * before it has posted whatever the socket holds, which would break the cap.
 *
 * Every operation in flight holds a reference on its connection; a
 * connection is freed only when its last CQE has been seen.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"
#include "uring_probe.h"
#include "uring_uapi.h"
#include "uring_udp.h"

/* Operation tags in the low bits of user_data (every tagged object is 8-aligned). */
enum {
	OP_UDP = 0, /* UDP's (uring_udp.c): the object says what it is */
	OP_RECV = 1,
	OP_SEND,
	OP_CANCEL, /* a cancel aimed at a connection's operations (NULL: the worker's) */
	OP_ACCEPT,
	OP_CTL,     /* poll on the control eventfd */
	OP_ZC,      /* a zero-copy send: its result, then its notification */
	OP_CONNECT, /* the relay's connect to its upstream */
	OP_MASK = 7,
};

#define BGID     0
#define BGID_UDP 1
/* Provided buffers a worker starts with: an idle server holds almost nothing. */
#define INITIAL_BUFS 4
#define CQE_BATCH    256
/* iovecs kept inside each connection; longer queues get a heap array. */
#define INLINE_IOV 4

/* Test hook: when set before a server is created, use single-shot receives
 * only, as on kernels without multishot byte limits. */
int rb__uring_test_single_recv;
/* Test counters, summed over every worker of the process. */
struct rb_uring_test_counters {
	uint64_t bundle_cqes;   /* receive CQEs that covered more than one buffer */
	uint64_t bufs_consumed; /* ring buffers the kernel finished with */
	uint64_t shared_bufs;   /* buffers that held bytes of more than one receive */
	uint64_t shadow_miss;   /* CQEs whose buffer was not at the shadow's head */
	uint64_t batched_waits; /* waits for more than one CQE (min-wait batching) */
	uint64_t zc_sends;      /* zero-copy sends completed (their first CQE) */
	uint64_t zc_more;       /* ... whose first CQE said a notification follows */
	uint64_t zc_notifs;     /* ... and their notifications */
};
struct rb_uring_test_counters rb__uring_test_counters;
#define TEST_COUNT(field, n)                                                                       \
	__atomic_add_fetch(&rb__uring_test_counters.field, (n), __ATOMIC_RELAXED)

/* A ring buffer: given to the kernel, filled by receives (one receive, or
 * several with incremental consumption), back to the ring when the kernel
 * has finished with it and every byte in it has been sent. */
struct ubuf {
	uint32_t fill; /* bytes the kernel has put into it */
	uint32_t refs; /* queued segments that point into it */
	bool kdone;    /* the kernel has moved past it */
};

/* A run of received bytes in one buffer, queued on a connection. */
struct useg {
	uint32_t next; /* next segment of the connection's queue, or SEG_NIL */
	uint32_t off, len;
	uint16_t bid;
};
#define SEG_NIL UINT32_MAX

/*
 * A uring session: the session's records (session.h: its sockets, and its
 * flows, whose FLOW_* state this model keeps as the reactor does), and what
 * the completion model adds per socket (its receive) and per flow (the
 * bytes waiting for its sink, and its one send in flight).
 */
struct uconn;
struct uflow;

enum {
	US_RECV = 1u << 0,       /* a receive is in flight */
	US_MSHOT = 1u << 1,      /* ... and it is multishot */
	US_CANCELLING = 1u << 2, /* ... and a cancel for it was submitted */
	US_BUNDLE = 1u << 3,     /* ... and it is a bundle */
	US_BUFWAIT = 1u << 4,    /* got ENOBUFS; on the bufwait list */
	US_QUEUED = 1u << 5,     /* used its read budget; on the ready list */
	US_CONNECTING = 1u << 6, /* the relay's upstream: its connect is in flight */
	US_UPSTREAM = 1u << 7,   /* the relay's upstream (its bytes are counted apart) */
	US_NOZC = 1u << 8,       /* refused a zero-copy send: plain sends only */
};

/* A socket: its registered slot and its receive. */
struct usock {
	struct uconn *c;
	struct rb_sock *sk;  /* the session's record: fd, tcp */
	struct uflow *in;    /* the flow its bytes go into, or NULL */
	struct uflow *out;   /* the flow that sends to it, or NULL */
	int slot;            /* registered file index, or -1 */
	uint32_t flags;      /* US_* */
	size_t arm_bytes;    /* received since the last requeue: the read budget */
	struct rb_list link; /* ready or bufwait list */
};

/* How a flow's bytes are held between its source and its sink. */
enum uflow_kind {
	UF_SEGS,  /* received buffers, sent as they are (echo, relay) */
	UF_DROP,  /* no sink: input is counted and dropped (discard) */
	UF_GEN,   /* no source: the chargen stream */
	UF_CHAIN, /* framed into answers in a chunk chain (sockperf) */
};

enum {
	UF_SEND = 1u << 0, /* a send is in flight */
	UF_SENT = 1u << 1, /* on the list of sends made since the last wait */
};

/*
 * A zero-copy send (IORING_OP_SEND_ZC, or SENDMSG_ZC for several iovecs).
 * Its first CQE is the send's result (with IORING_CQE_F_MORE when a
 * notification follows); the flow goes on from there as after any send.
 * The kernel may read the bytes until the notification (IORING_CQE_F_NOTIF:
 * a TCP segment holds them until it is acknowledged), so the send holds a
 * reference on each buffer its iovecs point into until then, and the
 * buffers go back to the ring only after it. The notification may come
 * after the flow has sent again, or after the session is gone: each send
 * is its own object (and user_data), owned by the worker, not the session.
 *
 * Until then its bytes still count against the flow's cap (and as
 * buffered): the kernel does not charge zero-copy pages to the socket's
 * send buffer, so a peer that does not read would otherwise let one
 * connection take every buffer of the ring.
 */
struct uzc {
	struct uflow *f;     /* until the notification, or the session's end */
	struct rb_list link; /* the worker's zc list */
	uint32_t held;       /* bytes sent (from the first CQE), held until the notification */
	bool waiting;        /* the first CQE said a notification follows (a session ref) */
	uint32_t n;
	uint16_t bid[]; /* a buffer per iovec (a buffer may appear twice) */
};

struct uflow {
	struct uconn *c;
	struct rb_flow *rf; /* the session's record: FLOW_* state, chain, stage */
	struct usock *src, *sink;
	enum uflow_kind kind;
	uint32_t flags;  /* UF_* */
	unsigned bufcap; /* ring buffers it may hold */
	/* Received, unsent bytes (UF_SEGS): segments in arrival order. */
	uint32_t qhead, qtail;
	unsigned qbufs;             /* segments queued */
	uint32_t qoff;              /* bytes of the head segment already sent */
	size_t bytes;               /* unsent bytes (UF_CHAIN: the chain's) */
	size_t send_bytes;          /* bytes of the send in flight */
	struct rb_flow_impair *imp; /* rf->imp, kept here: on_recv and on_send read it */
	struct uzc *zc;             /* the send in flight, if zero-copy */
	size_t zc_held;             /* bytes sent zero-copy, not yet notified */
	unsigned zc_pending;        /* zero-copy sends not yet notified */
	struct msghdr msg;
	struct iovec *iov;
	unsigned iov_cap;
	struct iovec iov_inline[INLINE_IOV];
};

struct uconn {
	struct rb_session s;
	uint32_t flags; /* UC_* */
	unsigned refs;  /* operations in flight (receives, sends, connect, cancels) */
	/* The session's shape, copied here: every CQE reads it, and the
	 * session's own fields lie cache lines away. */
	uint8_t n_socks, n_flows;
	uint8_t why; /* with UC_WHY: the close reason (enum rb_close_reason) */
	bool chargen;
	bool echo; /* one socket, one flow of received buffers back to it */
	struct usock us[RB_SESSION_SOCKS];
	struct uflow uf[]; /* s.n_flows of them */
};

enum {
	UC_CLOSING = 1u << 0, /* closing: everything is cancelled, freed at refs 0 */
	UC_ERROR = 1u << 1,   /* ... because of an error (counts as a reset) */
	UC_WHY = 1u << 2,     /* ... for the reason in why (a timeout, or a stop) */
};

struct ulisten {
	int fd;
	bool tcp;
	bool armed;            /* multishot accept in flight */
	bool cancelled;        /* a cancel was submitted for it */
	struct rb_timer retry; /* re-arm after a back-off (descriptors ran out) */
	struct uring *u;
} __attribute__((aligned(8)));

struct uring {
	struct rb_ratelimit rl_unknown;
	struct io_uring ring;
	bool ring_ok;
	bool enabled;
	bool sqpoll;
	const char *mode;
	/* Provided-buffer ring: nbufs entries, the first nalloc backed by chunks. */
	struct io_uring_buf_ring *br;
	size_t br_len;
	unsigned nbufs, nalloc;
	unsigned ring_free;  /* published and not yet seen consumed */
	unsigned to_publish; /* added since the last advance */
	struct rb_chunk **chunk;
	struct ubuf *meta;
	/* The ring's order, as the kernel sees it: shadow[pos & mask] is the
	 * buffer at ring position pos. The kernel takes buffers from khead on;
	 * a bundle's buffers are found by position from there. */
	uint16_t *shadow;
	unsigned khead, ktail;
	uint32_t bufsize;
	bool bundle; /* receives are bundles */
	bool inc;    /* the ring consumes buffers incrementally */
	bool batch;  /* min-wait batching: one enter per wake-up */
	unsigned batch_us;
	/* Zero-copy sends (--uring-send-zc): from zc_min bytes (0: never); those
	 * whose notification has not come. A stop waits for them until its
	 * deadline, then at most ZC_GRACE_MS more (zc_timer). */
	size_t zc_min;
	struct rb_list zc;
	unsigned n_zc;
	bool zc_give_up;
	struct rb_timer zc_timer;
	/* Flows that sent since the last wait (see ring_wait). */
	struct uflow **sent;
	unsigned n_sent, sent_cap;
	bool reg_ring;
	/* Segments: a pool of indices, grown as needed. */
	struct useg *seg;
	uint32_t nseg, seg_free;
	unsigned conn_bufcap;  /* buffers an echo's flow may hold */
	unsigned relay_bufcap; /* ... and each of a relay's two */
	bool mshot_limit;
	bool want_grow; /* a receive found the ring empty */
	/* Registered (fixed) files: requests on them skip the file refcount. */
	int *slot_free;
	unsigned n_slots, n_slot_free;
	/* Everything else. */
	struct rb_list conns, ready, bufwait;
	struct ulisten lst[RB_MAX_LISTEN];
	size_t n_lst;
	unsigned wops; /* accept, control poll and their cancels in flight */
	bool ctl_armed, ctl_cancelled;
	bool listen_released;
	bool closing_all;
	struct rb_uudp *udp; /* the UDP listeners (uring_udp.c), or NULL */
	char detail[400];
};

static inline uint64_t tag(const void *p, unsigned op)
{
	return (uint64_t)(uintptr_t)p | op;
}

static inline void *untag(uint64_t ud)
{
	return (void *)(uintptr_t)(ud & ~(uint64_t)OP_MASK);
}

/* ---- provided buffers ---- */

/* Put a buffer at the ring's tail (visible at the next buf_publish), and
 * note where it went. */
static void buf_give(struct uring *u, uint16_t bid)
{
	io_uring_buf_ring_add(u->br, u->chunk[bid]->data, u->bufsize, bid,
	                      io_uring_buf_ring_mask(u->nbufs), (int)u->to_publish);
	u->shadow[u->ktail & (u->nbufs - 1)] = bid;
	u->ktail++;
	u->to_publish++;
	u->meta[bid].fill = 0;
	u->meta[bid].refs = 0;
	u->meta[bid].kdone = false;
}

/* A buffer goes back once the kernel is done with it and its bytes are sent. */
static void buf_release(struct uring *u, uint16_t bid)
{
	if (u->meta[bid].kdone && u->meta[bid].refs == 0)
		buf_give(u, bid);
}

static uint32_t seg_alloc(struct uring *u)
{
	uint32_t i;

	if (u->seg_free == SEG_NIL) {
		uint32_t n = u->nseg ? u->nseg * 2 : 256;
		struct useg *seg = realloc(u->seg, n * sizeof(*seg));
		if (!seg)
			return SEG_NIL;
		for (i = u->nseg; i < n; i++)
			seg[i].next = i + 1 < n ? i + 1 : SEG_NIL;
		u->seg = seg;
		u->seg_free = u->nseg;
		u->nseg = n;
	}
	i = u->seg_free;
	u->seg_free = u->seg[i].next;
	return i;
}

static void seg_free(struct uring *u, uint32_t i)
{
	u->seg[i].next = u->seg_free;
	u->seg_free = i;
}

/* Make the buffers given back since the last call visible to the kernel. */
static void buf_publish(struct uring *u)
{
	if (!u->to_publish)
		return;
	io_uring_buf_ring_advance(u->br, (int)u->to_publish);
	u->ring_free += u->to_publish;
	u->to_publish = 0;
}

/* Back more of the ring with pool chunks. Returns how many were added. */
static unsigned buf_grow(struct rb_worker *w, struct uring *u, unsigned want)
{
	unsigned added = 0;

	while (added < want && u->nalloc < u->nbufs) {
		struct rb_chunk *c = rb_pool_get(&w->pool);
		if (!c)
			break;
		u->chunk[u->nalloc] = c;
		buf_give(u, (uint16_t)u->nalloc);
		u->nalloc++;
		added++;
	}
	return added;
}

/* ---- submission ---- */

static struct io_uring_sqe *get_sqe(struct uring *u)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);

	/* Full: hand what is queued to the kernel and take the next slot. Buffers
	 * given back so far are published first, as the kernel may need them. */
	while (!sqe) {
		buf_publish(u);
		/* Older kernels refuse submissions (EBUSY) while completions wait
		 * in their overflow list: the CQEs being handled were copied out
		 * and their slots released, so let the kernel move them in. */
		if (io_uring_submit(&u->ring) < 0 && !u->sqpoll)
			io_uring_get_events(&u->ring);
		if (u->sqpoll)
			io_uring_sqring_wait(&u->ring);
		sqe = io_uring_get_sqe(&u->ring);
	}
	return sqe;
}

/* What an SQE names a socket by: its registered file when it has one
 * (sqe_fixed marks the SQE so), else its descriptor. */
static inline int sqe_fd(const struct usock *k)
{
	return k->slot >= 0 ? k->slot : k->sk->fd;
}

static inline void sqe_fixed(struct io_uring_sqe *sqe, const struct usock *k)
{
	if (k->slot >= 0)
		sqe->flags |= IOSQE_FIXED_FILE;
}

static struct io_uring_sqe *udp_get_sqe(void *ctx)
{
	return get_sqe(ctx);
}

static size_t conn_cap(const struct rb_worker *w)
{
	return w->srv->cfg.conn_buffer;
}

static void conn_advance(struct rb_worker *w, struct uring *u, struct uconn *c);

static void sock_unlist(struct usock *k)
{
	if (k->flags & (US_QUEUED | US_BUFWAIT)) {
		rb_list_del(&k->link);
		k->flags &= ~(US_QUEUED | US_BUFWAIT);
	}
}

static void sock_cancel_recv(struct uring *u, struct usock *k)
{
	struct io_uring_sqe *sqe;

	if (!(k->flags & US_RECV) || (k->flags & US_CANCELLING))
		return;
	sqe = get_sqe(u);
	io_uring_prep_cancel64(sqe, tag(k, OP_RECV), 0);
	io_uring_sqe_set_data64(sqe, tag(k->c, OP_CANCEL));
	k->flags |= US_CANCELLING;
	k->c->refs++;
}

static void cancel_op(struct uring *u, struct uconn *c, uint64_t target)
{
	struct io_uring_sqe *sqe = get_sqe(u);

	io_uring_prep_cancel64(sqe, target, 0);
	io_uring_sqe_set_data64(sqe, tag(c, OP_CANCEL));
	c->refs++;
}

/*
 * Reset a connected socket now without closing it (TCP: connect() to
 * AF_UNSPEC sends an RST and drops both queues), which also ends a send
 * waiting on it. Where that is refused (not TCP, or a kernel that will not
 * disconnect a socket with a sender waiting), our FIN ends such a send,
 * and SO_LINGER 0 at close still turns it into an RST: the FIN waits
 * behind the unsent bytes and is dropped with them.
 */
static void sock_abort(int fd)
{
	struct sockaddr sa = {.sa_family = AF_UNSPEC};

	if (connect(fd, &sa, sizeof(sa)) < 0)
		shutdown(fd, SHUT_WR);
}

/*
 * Zero-copy bytes the kernel still holds for the session (sent, not yet
 * acknowledged) keep it, and its buffers, until their notifications: reset
 * each socket that has them, which drops them and brings the
 * notifications at once.
 */
static void conn_abort_zc(struct uconn *c)
{
	for (unsigned i = 0; i < c->n_flows; i++) {
		struct uflow *f = &c->uf[i];
		if (f->zc_pending && f->sink->sk->fd >= 0)
			sock_abort(f->sink->sk->fd);
	}
}

/*
 * The stop deadline: a session no longer waits for its zero-copy
 * notifications. The bytes are still the kernel's to deliver (a clean EOF
 * after them, as for a plain send's bytes): the buffers stay held until the
 * notifications, or are left allocated, never reused, at exit.
 */
static void zc_detach(struct rb_worker *w, struct uring *u, struct uconn *c)
{
	struct rb_list *it;

	for (unsigned i = 0; i < c->n_flows; i++) {
		if (!c->uf[i].zc_pending)
			continue;
		for (it = u->zc.next; it != &u->zc; it = it->next) {
			struct uzc *z = rb_container_of(it, struct uzc, link);
			if (z->f != &c->uf[i] || !z->waiting)
				continue;
			z->f->zc_held -= z->held;
			z->f->zc_pending--;
			c->refs--;
			RB_STAT_SUB(w, buffered, z->held);
			z->held = 0;
			z->f = NULL;
		}
	}
}

/* The session's timers: the relay's connect, the timeouts, the impairments. */
static void conn_timers_cancel(struct rb_worker *w, struct uconn *c)
{
	rb__timer_cancel(&w->timers, &c->s.timer);
	rb__timer_cancel(&w->timers, &c->s.idle_timer);
	if (c->s.imp)
		rb__timer_cancel(&w->timers, &c->s.imp->timer);
}

/* Give up on a session: cancel whatever it has in flight; it is freed when
 * the last CQE comes back (maybe now: c may be gone on return). Not an
 * error: closed once every flow is done (our FINs were sent), or at the
 * stop deadline. */
static void conn_close(struct rb_worker *w, struct uring *u, struct uconn *c, bool error)
{
	/* Already closing: an operation that failed meanwhile (a send ended
	 * by our FIN, below) may have been the last one. */
	if (c->flags & UC_CLOSING) {
		conn_advance(w, u, c);
		return;
	}
	c->flags |= UC_CLOSING | (error ? UC_ERROR : 0);
	conn_timers_cancel(w, c);
	for (unsigned i = 0; i < c->n_socks; i++) {
		struct usock *k = &c->us[i];
		sock_unlist(k);
		sock_cancel_recv(u, k);
		if (k->flags & US_CONNECTING)
			cancel_op(u, c, tag(k, OP_CONNECT));
	}
	/* What was sent zero-copy is, like a plain send's bytes, the
	 * kernel's to deliver: a close waits for it (the notifications), but
	 * an error or a write timeout (a peer that stopped reading) drops it. */
	if (error || ((c->flags & UC_WHY) && c->why == RB_CLOSE_WRITE_TIMEOUT))
		conn_abort_zc(c);
	for (unsigned i = 0; i < c->n_flows; i++) {
		struct uflow *f = &c->uf[i];
		if (!(f->flags & UF_SEND))
			continue;
		cancel_op(u, c, f->zc ? tag(f->zc, OP_ZC) : tag(f, OP_SEND));
		/* A send the kernel could not finish without waiting (its poll
		 * said writable, the send still found no room) may have been
		 * handed to an io-wq worker, where it blocks on this blocking
		 * socket and a cancel does not wake it: the session would wait
		 * for a peer that may never read. Ending the sink's output ends
		 * it: a close that resets (an error, the stop deadline) resets
		 * the sink now; a clean one (chargen's peer left) sends our FIN. */
		if (error || u->closing_all)
			sock_abort(f->sink->sk->fd);
		else
			shutdown(f->sink->sk->fd, SHUT_WR);
	}
	conn_advance(w, u, c);
}

/* Put a socket in the registered-file table, if there is room. */
static void sock_register(struct uring *u, struct usock *k)
{
	if (u->n_slot_free) {
		int slot = u->slot_free[--u->n_slot_free];
		if (io_uring_register_files_update(&u->ring, (unsigned)slot, &k->sk->fd, 1) == 1)
			k->slot = slot;
		else
			u->slot_free[u->n_slot_free++] = slot;
	}
}

/* Close a socket (dropping its table slot first: the table holds a
 * reference, or close() would not close). */
static void sock_close(struct uring *u, struct usock *k)
{
	if (k->slot >= 0) {
		int none = -1;
		io_uring_register_files_update(&u->ring, (unsigned)k->slot, &none, 1);
		u->slot_free[u->n_slot_free++] = k->slot;
		k->slot = -1;
	}
	if (k->sk->fd >= 0)
		close(k->sk->fd);
	k->sk->fd = -1;
}

static void flow_free_segs(struct uring *u, struct uflow *f)
{
	while (f->qbufs) {
		uint32_t i = f->qhead;
		uint16_t bid = u->seg[i].bid;
		f->qhead = u->seg[i].next;
		f->qbufs--;
		seg_free(u, i);
		u->meta[bid].refs--;
		buf_release(u, bid);
	}
}

/* Close for a reason of its own (a timeout, a stop), counted as that. */
static void conn_close_as(struct rb_worker *w, struct uring *u, struct uconn *c, bool error,
                          enum rb_close_reason why)
{
	if (!(c->flags & UC_CLOSING)) {
		c->flags |= UC_WHY;
		c->why = (uint8_t)why;
	}
	conn_close(w, u, c, error);
}

static void conn_free(struct rb_worker *w, struct uring *u, struct uconn *c)
{
	conn_timers_cancel(w, c);
	for (unsigned i = 0; i < c->n_socks; i++) {
		struct usock *k = &c->us[i];
		/* A relay is transparent: an error on one side (an RST, a failed
		 * send or connect) is passed on as an RST on the other. */
		if ((c->flags & UC_ERROR) && c->n_socks > 1 && k->sk->fd >= 0)
			setsockopt(k->sk->fd, SOL_SOCKET, SO_LINGER,
			           &(struct linger){.l_onoff = 1, .l_linger = 0},
			           sizeof(struct linger));
		sock_close(u, k);
		sock_unlist(k);
	}
	for (unsigned i = 0; i < c->n_flows; i++) {
		struct uflow *f = &c->uf[i];
		if (f->flags & UF_SENT) {
			for (unsigned j = 0; j < u->n_sent; j++)
				if (u->sent[j] == f)
					u->sent[j] = u->sent[--u->n_sent];
		}
		flow_free_segs(u, f);
		RB_STAT_SUB(w, buffered, f->bytes + f->zc_held);
		/* Zero-copy sends still held by the kernel outlive the session. */
		if (f->zc_pending) {
			struct rb_list *it;
			for (it = u->zc.next; it != &u->zc; it = it->next) {
				struct uzc *z = rb_container_of(it, struct uzc, link);
				if (z->f == f) {
					z->f = NULL;
					z->held = 0; /* counted out above */
				}
			}
		}
		if (f->rf->copy)
			f->rf->copy->release(w, f->rf);
		if (f->iov != f->iov_inline)
			free(f->iov);
	}
	free(c->s.imp);
	c->s.imp = NULL;
	rb_list_del(&c->s.all);
	rb__session_closing(w, &c->s,
	                    c->flags & UC_WHY     ? (enum rb_close_reason)c->why
	                    : c->flags & UC_ERROR ? RB_CLOSE_ERROR
	                    : u->closing_all      ? RB_CLOSE_SHUTDOWN
	                                          : RB_CLOSE_EOF);
	free(c);
}

/* Room for n iovecs in the flow (kept until the send's CQE); returns how
 * many there is room for (fewer only if memory ran out). */
static unsigned flow_iov_grow(struct uflow *f, unsigned n)
{
	unsigned cap = f->iov_cap;
	struct iovec *iov;

	while (cap < n)
		cap *= 2;
	if (cap > IOV_MAX)
		cap = IOV_MAX;
	iov = malloc(cap * sizeof(*iov));
	if (iov) {
		if (f->iov != f->iov_inline)
			free(f->iov);
		f->iov = iov;
		f->iov_cap = cap;
	}
	/* Out of memory: send what fits, the rest next. */
	return n > f->iov_cap ? f->iov_cap : n;
}

static inline unsigned flow_iov(struct uflow *f, unsigned n)
{
	return n <= f->iov_cap ? n : flow_iov_grow(f, n);
}

/*
 * A zero-copy send of the flow's first n queued segments (the iovecs), or
 * NULL (plain send): each of their buffers is held until the notification.
 */
static struct uzc *zc_begin(struct uring *u, struct uflow *f, unsigned n)
{
	struct uzc *z = malloc(sizeof(*z) + n * sizeof(z->bid[0]));
	uint32_t seg = f->qhead;

	if (!z)
		return NULL;
	z->f = f;
	z->held = 0;
	z->waiting = false;
	f->zc_pending++;
	z->n = n;
	for (unsigned i = 0; i < n; i++) {
		z->bid[i] = u->seg[seg].bid;
		u->meta[z->bid[i]].refs++;
		seg = u->seg[seg].next;
	}
	rb_list_init(&z->link);
	rb_list_add_tail(&u->zc, &z->link);
	u->n_zc++;
	return z;
}

/* The notification is in (or the ring is gone): the buffers may go back. */
static void zc_end(struct uring *u, struct uzc *z)
{
	if (z->f) {
		z->f->zc_held -= z->held;
		z->f->zc_pending--;
	}
	for (uint32_t i = 0; i < z->n; i++) {
		u->meta[z->bid[i]].refs--;
		buf_release(u, z->bid[i]);
	}
	rb_list_del(&z->link);
	u->n_zc--;
	free(z);
}

/* The one send in flight for the flow: f->iov[0..n) to its sink. */
static inline __attribute__((always_inline)) void flow_submit_send(struct uring *u, struct uflow *f,
                                                                   unsigned n)
{
	struct usock *k = f->sink;
	struct io_uring_sqe *sqe = get_sqe(u);
	struct uzc *z = NULL;

	f->send_bytes = 0;
	for (unsigned i = 0; i < n; i++)
		f->send_bytes += f->iov[i].iov_len;
	/* Received buffers to TCP only (UNIX sockets refuse it with
	 * EOPNOTSUPP): sockperf's chain and chargen's pattern are plain sends. */
	if (u->zc_min && f->kind == UF_SEGS && f->send_bytes >= u->zc_min && k->sk->tcp &&
	    !(k->flags & US_NOZC))
		z = zc_begin(u, f, n);
	if (n == 1) {
		if (z)
			io_uring_prep_send_zc(sqe, sqe_fd(k), f->iov[0].iov_base, f->iov[0].iov_len,
			                      MSG_NOSIGNAL, 0);
		else
			io_uring_prep_send(sqe, sqe_fd(k), f->iov[0].iov_base, f->iov[0].iov_len,
			                   MSG_NOSIGNAL);
	} else {
		/* The msghdr and iovecs stay untouched until the CQE: with SQPOLL the
		 * kernel may read them after io_uring_submit returns. */
		memset(&f->msg, 0, sizeof(f->msg));
		f->msg.msg_iov = f->iov;
		f->msg.msg_iovlen = n;
		if (z)
			io_uring_prep_sendmsg_zc(sqe, sqe_fd(k), &f->msg, MSG_NOSIGNAL);
		else
			io_uring_prep_sendmsg(sqe, sqe_fd(k), &f->msg, MSG_NOSIGNAL);
	}
	sqe_fixed(sqe, k);
	io_uring_sqe_set_data64(sqe, z ? tag(z, OP_ZC) : tag(f, OP_SEND));
	f->zc = z;
	f->flags |= UF_SEND;
	f->c->refs++;
	if (u->batch && !(f->flags & UF_SENT)) {
		if (u->n_sent == u->sent_cap) {
			unsigned cap = u->sent_cap ? 2 * u->sent_cap : 64;
			struct uflow **v = realloc(u->sent, cap * sizeof(*v));
			if (!v)
				return; /* not listed: counted as a send someone waits for */
			u->sent = v;
			u->sent_cap = cap;
		}
		u->sent[u->n_sent++] = f;
		f->flags |= UF_SENT;
	}
}

/* One send covering every queued segment (at most IOV_MAX). */
static void flow_send_segs(struct uring *u, struct uflow *f)
{
	unsigned n = flow_iov(f, f->qbufs < IOV_MAX ? f->qbufs : IOV_MAX);
	uint32_t seg = f->qhead;

	for (unsigned i = 0; i < n; i++) {
		const struct useg *g = &u->seg[seg];
		uint32_t off = i == 0 ? f->qoff : 0;
		f->iov[i].iov_base = u->chunk[g->bid]->data + g->off + off;
		f->iov[i].iov_len = g->len - off;
		seg = g->next;
	}
	flow_submit_send(u, f, n);
}

/* An impaired flow's send: the queued segments up to limit bytes (> 0). */
static void flow_send_segs_upto(struct uring *u, struct uflow *f, size_t limit)
{
	unsigned n = flow_iov(f, f->qbufs < IOV_MAX ? f->qbufs : IOV_MAX), i;
	uint32_t seg = f->qhead;

	for (i = 0; i < n && limit > 0; i++) {
		const struct useg *g = &u->seg[seg];
		uint32_t off = i == 0 ? f->qoff : 0;
		size_t len = g->len - off < limit ? g->len - off : limit;
		f->iov[i].iov_base = u->chunk[g->bid]->data + g->off + off;
		f->iov[i].iov_len = len;
		limit -= len;
		seg = g->next;
	}
	flow_submit_send(u, f, i);
}

/* sockperf: one send covering the answers queued in the chain. */
static void flow_send_chain(struct rb_worker *w, struct uring *u, struct uflow *f)
{
	size_t chunks = f->rf->chain.chunks;
	unsigned n = flow_iov(f, chunks < IOV_MAX ? (unsigned)chunks : IOV_MAX);

	n = (unsigned)rb_chain_write_iov(&w->pool, &f->rf->chain, f->iov, (int)n);
	flow_submit_send(u, f, n);
}

/* chargen: eight periods of the stream from its position (the pattern holds
 * two, so a period from any offset is contiguous). */
#define GEN_IOV 8
static void flow_send_gen(struct uring *u, struct uflow *f)
{
	const unsigned char *pat = rb__chargen_pattern();
	unsigned n = flow_iov(f, GEN_IOV);

	for (unsigned i = 0; i < n; i++) {
		f->iov[i].iov_base = (void *)(pat + f->rf->gen_off);
		f->iov[i].iov_len = RB_CHARGEN_PERIOD;
	}
	flow_submit_send(u, f, n);
}

/*
 * Sends made since the last wait whose CQE nobody waits for: still in
 * flight, covering everything the flow holds, on a flow whose source is
 * still receiving (not paused, no EOF, not closing) while no receive waits
 * for buffers. Their CQEs only return buffers. Decided at the wait, not at
 * the send: a receive handled after the send can make it needed.
 */
static unsigned light_sends(struct uring *u)
{
	const uint32_t quiet = US_RECV | US_MSHOT | US_BUNDLE | US_UPSTREAM;
	bool bufs_ok = rb_list_empty(&u->bufwait);
	unsigned n = 0;

	for (unsigned i = 0; i < u->n_sent; i++) {
		struct uflow *f = u->sent[i];
		const struct usock *k = f->src;
		f->flags &= ~UF_SENT;
		if (bufs_ok && (f->flags & UF_SEND) && f->kind == UF_SEGS && (k->flags & US_RECV) &&
		    !(k->flags & ~quiet) && !(f->c->flags & UC_CLOSING) &&
		    f->bytes == f->send_bytes)
			n++;
	}
	u->n_sent = 0;
	return n;
}

/* Bytes the flow may still receive without passing its cap (0: pause). */
static size_t flow_room(const struct rb_worker *w, const struct uflow *f)
{
	size_t cap = conn_cap(w), room;

	if (f->bytes + f->zc_held >= cap || f->qbufs >= f->bufcap)
		return 0;
	room = cap - f->bytes - f->zc_held;
	/* sockperf: what is received is staged until framed. */
	if (f->kind == UF_CHAIN && RB_SOCKPERF_MAX_MSG - f->rf->stage_len < room)
		room = RB_SOCKPERF_MAX_MSG - f->rf->stage_len;
	return room;
}

/* A paused flow resumes below half of both caps, so it does not flap on
 * every small send. */
static bool flow_resumable(const struct rb_worker *w, const struct uflow *f)
{
	if (f->bytes + f->zc_held > conn_cap(w) / 2 || f->qbufs > f->bufcap / 2)
		return false;
	return f->kind != UF_CHAIN || f->rf->stage_len < RB_SOCKPERF_MAX_MSG;
}

/*
 * Arm a receive within the cap, the buffer cap and the read budget, or
 * pause the flow or requeue the socket. A flow that drops its input (no
 * sink, or stopping) has no cap.
 */
static void sock_arm_recv(struct rb_worker *w, struct uring *u, struct usock *k)
{
	struct uflow *f = k->in;
	size_t budget = w->srv->cfg.read_budget, room = SIZE_MAX, left;
	struct io_uring_sqe *sqe;
	int fd = sqe_fd(k);

	if (f->kind != UF_DROP && !(f->rf->flags & FLOW_DISCARD)) {
		room = flow_room(w, f);
		if (room == 0) {
			f->rf->flags |= FLOW_PAUSED;
			RB_STAT_ADD(w, pauses, 1);
			return;
		}
	}
	if (k->arm_bytes >= budget) {
		/* Fairness: re-arm only after everyone else in this batch. */
		k->arm_bytes = 0;
		k->flags |= US_QUEUED;
		rb_list_add_tail(&u->ready, &k->link);
		RB_STAT_ADD(w, requeues, 1);
		return;
	}
	left = budget - k->arm_bytes;
	sqe = get_sqe(u);
	if (u->mshot_limit && room >= u->bufsize) {
		/* Each receive takes at most one buffer, and the request ends once
		 * its limit is used up: the last one may land bufsize-1 bytes past
		 * the limit, never past the cap. */
		size_t limit = room - (u->bufsize - 1);
		if (limit > left)
			limit = left;
		if (limit > UINT32_MAX)
			limit = UINT32_MAX;
		io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
		sqe->file_index = (uint32_t)limit; /* sqe->optlen in newer headers */
		k->flags |= US_MSHOT;
	} else {
		size_t len = room < u->bufsize ? room : u->bufsize;
		io_uring_prep_recv(sqe, fd, NULL, len, 0);
	}
	sqe_fixed(sqe, k);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = BGID;
	/* Only multishot receives are bundles: their byte limit bounds a
	 * bundle exactly, while a single-shot bundle's length was seen to be
	 * exceeded (with incremental buffers, Linux 6.18), past the cap. */
	if (u->bundle && (k->flags & US_MSHOT)) {
		sqe->ioprio |= IORING_RECVSEND_BUNDLE;
		k->flags |= US_BUNDLE;
	}
	io_uring_sqe_set_data64(sqe, tag(k, OP_RECV));
	k->flags |= US_RECV;
	k->c->refs++;
}

/* What a socket's receive does next: arm, wait, or end. */
static void sock_advance(struct rb_worker *w, struct uring *u, struct usock *k)
{
	struct uflow *f = k->in;
	uint32_t ff;

	if (!f || (k->flags & US_CONNECTING))
		return;
	ff = f->rf->flags;
	if (ff & FLOW_DISCARD) {
		/* Lingering close: closing with unread input sends an RST that
		 * destroys the bytes still queued for the peer. Drop input until
		 * the peer's FIN; only then close. */
		if (ff & FLOW_SRC_EOF)
			sock_cancel_recv(u, k);
		else if (!(k->flags & (US_RECV | US_BUFWAIT | US_QUEUED)))
			sock_arm_recv(w, u, k);
		return;
	}
	if (ff & (FLOW_RD_EOF | FLOW_STALLED)) {
		/* (Stalled: --accept-delay has not let it start, or
		 * --reset-after/--stall-after cut it.) */
		sock_unlist(k);
		sock_cancel_recv(u, k);
		return;
	}
	if (ff & FLOW_PAUSED) {
		if (!flow_resumable(w, f))
			return;
		f->rf->flags &= ~FLOW_PAUSED;
	}
	if (!(k->flags & (US_RECV | US_BUFWAIT | US_QUEUED)))
		sock_arm_recv(w, u, k);
}

/* Everything the source will send has been passed on (or dropped), and the
 * sink has had our FIN. A flow that is discarding lingers until the
 * source's FIN. */
static bool flow_done(const struct uflow *f)
{
	uint32_t ff = f->rf->flags;

	return (ff & FLOW_RD_EOF) && f->bytes == 0 && !(f->flags & UF_SEND) &&
	       (!(ff & FLOW_DISCARD) || !f->src || (ff & FLOW_SRC_EOF)) &&
	       (!f->sink || (ff & FLOW_SINK_SHUT));
}

/* Bytes the session's flows hold that their sinks have not taken. */
static bool conn_pending(const struct uconn *c)
{
	for (unsigned i = 0; i < c->n_flows; i++)
		if (c->uf[i].bytes)
			return true;
	return false;
}

/* ---- impairments (impair.h): bytes held back, flows cut ---- */

static struct uconn *imp_conn(struct rb_session_impair *si)
{
	return rb_container_of(si->owner, struct uconn, s);
}

/* The session's impairment timer, at `when` unless it is due earlier. */
static void impair_arm(struct rb_worker *w, struct uconn *c, uint64_t when)
{
	struct rb_timer *t = &c->s.imp->timer;

	if (when == UINT64_MAX || (rb__timer_armed(t) && t->when <= when))
		return;
	rb__timer_arm(&w->timers, t, when);
}

/* The session ends with an RST on every socket. */
static void impair_reset(struct rb_worker *w, struct uring *u, struct uconn *c)
{
	struct linger lg = {.l_onoff = 1, .l_linger = 0};

	for (unsigned i = 0; i < c->n_socks; i++)
		if (c->s.sock[i].fd >= 0)
			setsockopt(c->s.sock[i].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	conn_close(w, u, c, true);
}

/* Bytes the kernel has not delivered from fd yet (0 if it cannot say). */
static int sock_unsent(int fd)
{
	int n = 0;

	return ioctl(fd, SIOCOUTQ, &n) == 0 && n > 0 ? n : 0;
}

/*
 * The flow has sent its N bytes (no send is in flight: the one that sent
 * them has completed): reset (once the kernel has delivered them, so the
 * peer can read them before the RST; at most a second), close (our FIN;
 * what the flow held is dropped, and its input is received and dropped
 * until the source's FIN) or stall (nothing more, either way, for good).
 * Returns -1 if the session was closed.
 */
static int impair_cut(struct rb_worker *w, struct uring *u, struct uflow *f)
{
	struct rb_flow_impair *fi = f->imp;
	struct uconn *c = f->c;

	fi->cut_done = true;
	RB_STAT_ADD(w, impair_cuts, 1);
	RB_STAT_SUB(w, buffered, f->bytes);
	flow_free_segs(u, f);
	f->bytes = 0;
	f->qoff = 0;
	rb__impair_dropped(fi);
	switch (fi->cut) {
	case RB_CUT_RESET:
		f->rf->flags |= FLOW_STALLED;
		if (sock_unsent(f->sink->sk->fd) == 0) {
			impair_reset(w, u, c);
			return -1;
		}
		c->s.imp->reset_by = w->now_us + rb__ms_to_us(1000);
		impair_arm(w, c, w->now_us + RB_US_PER_MS);
		break;
	case RB_CUT_CLOSE:
		f->rf->flags |= FLOW_RD_EOF | FLOW_DISCARD;
		f->rf->flags &= ~FLOW_PAUSED;
		break;
	case RB_CUT_STALL:
	case RB_CUT_NONE:
		f->rf->flags |= FLOW_STALLED;
		f->rf->flags &= ~FLOW_PAUSED;
		break;
	}
	return 0;
}

/*
 * An impaired flow's send (none in flight): only what is due (delay), what
 * the bucket allows (rate), a slice at a time, and no more than the bytes
 * after which the flow is cut. When nothing may go, the bytes stay queued
 * (against the cap: reading pauses as usual) and the session's timer is
 * set for when some may. Returns -1 if the session was closed.
 */
static int flow_send_impaired(struct rb_worker *w, struct uring *u, struct uflow *f)
{
	struct rb_flow_impair *fi = f->imp;
	size_t allow;

	if (fi->cut_done)
		return 0;
	/* Due once its N bytes have gone (N = 0: with the first input). */
	if (rb__impair_cut_due(fi) && (fi->out || f->bytes))
		return impair_cut(w, u, f);
	if (!f->qbufs)
		return 0;
	allow = rb__impair_allow(fi, f->bytes, w->now_us);
	if (allow == 0) {
		fi->held = true;
		RB_STAT_ADD(w, impair_holds, 1);
		impair_arm(w, f->c, rb__impair_wake(fi, f->bytes, w->now_us));
		return 0;
	}
	fi->held = false;
	flow_send_segs_upto(u, f, allow);
	return 0;
}

/* May the flow's end (our FIN) be passed on now? A delayed flow's FIN
 * waits as long as its bytes did. */
static bool impair_eof_ready(struct rb_worker *w, struct uflow *f)
{
	struct rb_flow_impair *fi = f->imp;

	if (fi->cut_done || rb__impair_eof_ok(fi, w->now_us))
		return true;
	impair_arm(w, f->c, fi->eof_due);
	return false;
}

/*
 * The one place that decides what a session does next: each flow sends
 * what it holds (one send in flight) and, once its input has ended and
 * everything is sent, passes our FIN to its sink (never to a sink still
 * connecting); a session whose flows are all done closes; each socket
 * then receives if its flow wants input.
 */
static void conn_advance(struct rb_worker *w, struct uring *u, struct uconn *c)
{
	bool all_done = true;

	if (c->flags & UC_CLOSING) {
		if (!c->refs)
			conn_free(w, u, c);
		return;
	}
	/* An echo's steady state (no end of input, not paused): what the loops
	 * below decide for it, without them. The hot path of the echo. */
	if (c->echo && !(c->uf[0].rf->flags & (FLOW_RD_EOF | FLOW_PAUSED))) {
		struct uflow *f = &c->uf[0];
		if (f->qbufs && !(f->flags & UF_SEND))
			flow_send_segs(u, f);
		if (!(c->us[0].flags & (US_RECV | US_BUFWAIT | US_QUEUED)))
			sock_arm_recv(w, u, &c->us[0]);
		return;
	}
	for (unsigned i = 0; i < c->n_flows; i++) {
		struct uflow *f = &c->uf[i];
		uint32_t ff = f->rf->flags;

		if (!(f->flags & UF_SEND) && f->sink && !(f->sink->flags & US_CONNECTING)) {
			if (f->kind == UF_SEGS) {
				if (f->imp) {
					if (flow_send_impaired(w, u, f) < 0)
						return;
					ff = f->rf->flags; /* a cut may have ended it */
				} else if (f->qbufs) {
					flow_send_segs(u, f);
				}
			} else if (f->kind == UF_CHAIN) {
				if (f->bytes)
					flow_send_chain(w, u, f);
			} else if (!(ff & FLOW_RD_EOF)) {
				flow_send_gen(u, f);
			}
		}
		/* sockperf: an idle flow keeps no staging buffer (as the reactor). */
		if (f->kind == UF_CHAIN && !f->bytes)
			f->rf->copy->idle(w, f->rf);
		if (!(ff & FLOW_RD_EOF)) {
			all_done = false;
			continue;
		}
		/* Drain, then FIN (rule 6). */
		if (!f->bytes && !(f->flags & UF_SEND) && f->sink && !(ff & FLOW_SINK_SHUT) &&
		    !(f->sink->flags & US_CONNECTING) && (!f->imp || impair_eof_ready(w, f))) {
			shutdown(f->sink->sk->fd, SHUT_WR);
			f->rf->flags |= FLOW_SINK_SHUT;
		}
		if (!flow_done(f))
			all_done = false;
	}
	/* chargen runs until its peer leaves (unless stopping: then its FIN
	 * goes first, as for every flow). */
	if (c->chargen && (c->s.flow[0].flags & FLOW_SRC_EOF) &&
	    !(c->s.flow[1].flags & FLOW_DISCARD))
		all_done = true;
	if (all_done) {
		conn_close(w, u, c, false);
		return;
	}
	for (unsigned i = 0; i < c->n_socks; i++)
		sock_advance(w, u, &c->us[i]);
}

/* Queue len bytes at off in buffer bid; 0 or -ENOMEM. Bytes that follow
 * the tail segment in the same buffer extend it (one iovec, not two). */
static int flow_enqueue(struct uring *u, struct uflow *f, uint16_t bid, uint32_t off, uint32_t len)
{
	uint32_t i;

	if (f->qbufs) {
		struct useg *t = &u->seg[f->qtail];
		if (t->bid == bid && t->off + t->len == off) {
			t->len += len;
			f->bytes += len;
			return 0;
		}
	}
	i = seg_alloc(u);
	if (i == SEG_NIL)
		return -ENOMEM;
	u->seg[i] = (struct useg){.next = SEG_NIL, .off = off, .len = len, .bid = bid};
	u->meta[bid].refs++;
	if (f->qbufs)
		u->seg[f->qtail].next = i;
	else {
		f->qhead = i;
		f->qoff = 0;
	}
	f->qtail = i;
	f->qbufs++;
	f->bytes += len;
	return 0;
}

/* Keep received bytes for the flow: queued as they are, or (sockperf)
 * copied to its stage to be framed. False if they cannot be kept. */
static bool flow_keep(struct uring *u, struct uflow *f, uint16_t bid, uint32_t off, uint32_t len)
{
	struct rb_flow *rf;

	if (f->kind == UF_SEGS)
		return flow_enqueue(u, f, bid, off, len) == 0;
	rf = f->rf;
	if (len > RB_SOCKPERF_MAX_MSG - rf->stage_len)
		return false; /* past what the receive was armed for: never */
	memcpy(rf->stage + rf->stage_len, u->chunk[bid]->data + off, len);
	rf->stage_len += len;
	return true;
}

/* The kernel is done with the buffer at the ring's head: it moves on. */
static uint16_t ring_pop(struct uring *u)
{
	uint16_t bid = u->shadow[u->khead & (u->nbufs - 1)];

	u->khead++;
	if (u->ring_free)
		u->ring_free--;
	u->meta[bid].kdone = true;
	TEST_COUNT(bufs_consumed, 1);
	return bid;
}

/*
 * A receive CQE naming buffer bid with res bytes: find its buffers by ring
 * position (a bundle covers several, in ring order from the head; with
 * incremental consumption the head buffer may already hold earlier bytes
 * and keeps what is left), keep the bytes for f (NULL: drop them) and
 * return how many were kept.
 */
static uint32_t recv_take(struct uring *u, struct uflow *f, uint16_t bid, int res, bool bundle)
{
	uint32_t left = res > 0 ? (uint32_t)res : 0, kept = 0;
	unsigned pieces = 0;

	if (u->shadow[u->khead & (u->nbufs - 1)] != bid)
		TEST_COUNT(shadow_miss, 1);
	if (u->inc) {
		/* The kernel advances its head only past a buffer it has filled;
		 * a receive of 0 bytes (EOF) takes nothing. */
		while (left > 0) {
			uint16_t b = u->shadow[u->khead & (u->nbufs - 1)];
			uint32_t off = u->meta[b].fill;
			uint32_t take = u->bufsize - off < left ? u->bufsize - off : left;
			if (off > 0)
				TEST_COUNT(shared_bufs, 1);
			if (f && kept == (uint32_t)res - left && flow_keep(u, f, b, off, take))
				kept += take;
			u->meta[b].fill += take;
			left -= take;
			pieces++;
			if (u->meta[b].fill == u->bufsize) {
				ring_pop(u);
				buf_release(u, b);
			}
		}
	} else {
		/* Whole buffers: a bundle takes as many as its bytes fill (none
		 * for 0 bytes); a single receive always takes one. */
		unsigned n = bundle ? (left + u->bufsize - 1) / u->bufsize : 1;
		for (unsigned i = 0; i < n; i++) {
			uint16_t b = ring_pop(u);
			uint32_t take = left < u->bufsize ? left : u->bufsize;
			if (f && take && kept == (uint32_t)res - left &&
			    flow_keep(u, f, b, 0, take))
				kept += take;
			left -= take;
			pieces++;
			buf_release(u, b);
		}
	}
	if (pieces > 1)
		TEST_COUNT(bundle_cqes, 1);
	return kept;
}

/* A peer that breaks the protocol (sockperf framing) is reset, not closed
 * as if it had been answered in full. */
static void conn_reset(struct rb_worker *w, struct uring *u, struct uconn *c)
{
	setsockopt(c->s.sock[0].fd, SOL_SOCKET, SO_LINGER,
	           &(struct linger){.l_onoff = 1, .l_linger = 0}, sizeof(struct linger));
	conn_close(w, u, c, true);
}

/* sockperf: answer what is staged (rb__sockperf_frame, shared with the
 * readiness engines' strategy). False if the session was closed. */
static bool flow_frame(struct rb_worker *w, struct uring *u, struct uflow *f)
{
	size_t before = f->rf->chain.bytes;
	int rc = rb__sockperf_frame(w, f->rf);

	f->bytes = f->rf->chain.bytes;
	RB_STAT_ADD(w, buffered, (uint64_t)(f->bytes - before));
	RB_STAT_MAX(w, peak_conn_buffered, f->bytes);
	if (rc == -ENOBUFS) {
		/* The answers' chunks ran out: the rest stay staged and are
		 * answered after a send frees some, or, with nothing to send,
		 * once buffers come back (the bufwait list). */
		RB_STAT_ADD(w, memory_waits, 1);
		if (!f->bytes && !(f->src->flags & US_BUFWAIT)) {
			sock_unlist(f->src);
			f->src->flags |= US_BUFWAIT;
			rb_list_add_tail(&u->bufwait, &f->src->link);
		}
	} else if (rc == -EPROTO) {
		conn_reset(w, u, f->c);
		return false;
	} else if (rc < 0) {
		conn_close(w, u, f->c, true);
		return false;
	}
	return true;
}

static void on_recv(struct rb_worker *w, struct uring *u, struct usock *k, int res, unsigned flags)
{
	struct uconn *c = k->c;
	struct uflow *f = k->in;
	uint32_t ff = f->rf->flags;
	/* (Stalled: a receive that was in flight when the flow was cut.) */
	bool keep = res > 0 && !(c->flags & UC_CLOSING) && !(ff & (FLOW_DISCARD | FLOW_STALLED)) &&
	            f->kind != UF_DROP;
	uint32_t kept = 0;

	RB_STAT_ADD(w, read_calls, 1);
	/* Nothing pending yet: --write-timeout counts from now. */
	if (!f->bytes && (c->n_flows == 1 || !conn_pending(c)))
		c->s.last_write_us = w->now_us;
	if (keep && f->kind == UF_CHAIN && !f->rf->stage &&
	    !(f->rf->stage = malloc(RB_SOCKPERF_MAX_MSG)))
		keep = false; /* cannot be kept: the stream cannot go on (below) */
	if (flags & IORING_CQE_F_BUFFER)
		kept = recv_take(u, keep ? f : NULL, (uint16_t)(flags >> IORING_CQE_BUFFER_SHIFT),
		                 res, k->flags & US_BUNDLE);
	if (!(flags & IORING_CQE_F_MORE)) {
		k->flags &= ~(US_RECV | US_MSHOT | US_CANCELLING | US_BUNDLE);
		c->refs--;
	}
	if (res > 0 && (ff & (FLOW_DISCARD | FLOW_STALLED))) {
		/* Dropped: stopping, or after --close-after (as the reactor). */
		if (w->stopping)
			RB_STAT_ADD(w, stop_discarded, (uint64_t)res);
		else
			RB_STAT_ADD(w, bytes_in, (uint64_t)res);
		if (!(k->flags & US_UPSTREAM))
			c->s.bytes_in += (uint64_t)res;
		c->s.last_io_us = w->now_us;
	} else if (res > 0) {
		RB_STAT_ADD(w, bytes_in, (uint64_t)res);
		/* The session's own count is the client's side (as the reactor's). */
		if (k->flags & US_UPSTREAM)
			RB_STAT_ADD(w, upstream_bytes_in, (uint64_t)res);
		else
			c->s.bytes_in += (uint64_t)res;
		/* For the timeouts: bytes moved (w->now_us is kept up to date
		 * only when they need it). */
		c->s.last_io_us = w->now_us;
		if (!(c->flags & UC_CLOSING) && f->kind != UF_DROP) {
			k->arm_bytes += (size_t)res;
			/* Queued bytes count as buffered until sent or freed (a
			 * framing flow counts its answers instead). */
			if (f->kind == UF_SEGS) {
				RB_STAT_ADD(w, buffered, (uint64_t)kept);
				RB_STAT_MAX(w, peak_conn_buffered, f->bytes);
				/* The clock now, not the wake-up's: completions
				 * posted since (a submit runs task work) came later. */
				if (f->imp)
					rb__impair_arrived(f->imp, &c->s.imp->rng, kept,
					                   rb__now_us());
			}
			if (kept < (uint32_t)res) {
				/* Out of memory for the queue: the stream cannot go on. */
				conn_close(w, u, c, true);
				return;
			}
			if (f->kind == UF_CHAIN) {
				if (!flow_frame(w, u, f))
					return;
			} else if (f->qbufs >= f->bufcap) {
				/* One flow must not hold every buffer: stop a multishot
				 * receive at the buffer cap (the byte cap needs no cancel). */
				sock_cancel_recv(u, k);
			}
		} else if (f->kind == UF_DROP) {
			k->arm_bytes += (size_t)res;
		}
	} else if (res == 0) {
		f->rf->flags |= FLOW_RD_EOF | FLOW_SRC_EOF;
		if (f->imp && !(ff & FLOW_RD_EOF))
			rb__impair_eof(f->imp, &c->s.imp->rng, rb__now_us());
	} else if (res == -ENOBUFS) {
		/* The ring ran dry: wait for buffers, not an error; and grow it. */
		u->want_grow = true;
		if (!(c->flags & UC_CLOSING) && !(k->flags & US_BUFWAIT) &&
		    (!(ff & FLOW_RD_EOF) || ((ff & FLOW_DISCARD) && !(ff & FLOW_SRC_EOF)))) {
			sock_unlist(k);
			k->flags |= US_BUFWAIT;
			rb_list_add_tail(&u->bufwait, &k->link);
		}
	} else if (res != -ECANCELED && res != -EINTR && res != -EAGAIN) {
		/* (EAGAIN only if someone made the socket non-blocking: just re-arm.) */
		conn_close(w, u, c, true);
		return;
	}
	conn_advance(w, u, c);
}

/* Drop n sent bytes from the head of the queue; fully sent buffers go back. */
static void flow_consume(struct uring *u, struct uflow *f, size_t n)
{
	f->bytes -= n;
	while (n > 0) {
		uint32_t i = f->qhead;
		uint16_t bid = u->seg[i].bid;
		size_t avail = u->seg[i].len - f->qoff;
		if (n < avail) {
			f->qoff += (uint32_t)n;
			return;
		}
		n -= avail;
		f->qhead = u->seg[i].next;
		f->qoff = 0;
		f->qbufs--;
		seg_free(u, i);
		u->meta[bid].refs--;
		buf_release(u, bid);
	}
}

static void on_send(struct rb_worker *w, struct uring *u, struct uflow *f, int res)
{
	struct uconn *c = f->c;

	RB_STAT_ADD(w, write_calls, 1);
	f->flags &= ~UF_SEND;
	c->refs--;
	if (res > 0) {
		/* A short send simply continues from where it stopped. */
		RB_STAT_ADD(w, bytes_out, (uint64_t)res);
		if (f->sink->flags & US_UPSTREAM)
			RB_STAT_ADD(w, upstream_bytes_out, (uint64_t)res);
		else
			c->s.bytes_out += (uint64_t)res;
		c->s.last_io_us = c->s.last_write_us = w->now_us;
		if (f->kind == UF_SEGS) {
			RB_STAT_SUB(w, buffered, (uint64_t)res);
			flow_consume(u, f, (size_t)res);
			if (f->imp)
				rb__impair_sent(f->imp, (size_t)res, rb__now_us());
		} else if (f->kind == UF_CHAIN) {
			RB_STAT_SUB(w, buffered, (uint64_t)res);
			rb_chain_consume(&w->pool, &f->rf->chain, (size_t)res);
			f->bytes = f->rf->chain.bytes;
			/* Answers that waited for chunks go now. */
			if (f->rf->stage_len && !(c->flags & UC_CLOSING) && !flow_frame(w, u, f))
				return;
		} else {
			f->rf->gen_off = (f->rf->gen_off + (size_t)res) % RB_CHARGEN_PERIOD;
		}
	} else if (res != -ECANCELED && res != -EINTR && res != -EAGAIN) {
		/* 0 for a non-empty send cannot make progress: treat it as the
		 * peer gone, never loop on it. */
		conn_close(w, u, c, true);
		return;
	}
	conn_advance(w, u, c);
}

/* A zero-copy send's CQEs: first its result, then (with IORING_CQE_F_MORE
 * on the first) its notification. */
static void on_send_zc(struct rb_worker *w, struct uring *u, struct uzc *z, int res, unsigned flags)
{
	struct uflow *f = z->f;

	if (flags & IORING_CQE_F_NOTIF) {
		TEST_COUNT(zc_notifs, 1);
		RB_STAT_SUB(w, buffered, z->held);
		zc_end(u, z);
		/* The session waited for it (its reference); below the cap
		 * again, a paused flow may read on. */
		if (f) {
			f->c->refs--;
			conn_advance(w, u, f->c);
		}
		return;
	}
	TEST_COUNT(zc_sends, 1);
	f->zc = NULL;
	/* A socket that cannot send zero-copy (TCP can; this is in case):
	 * send the same bytes again, plainly. */
	if (res == -EOPNOTSUPP) {
		f->sink->flags |= US_NOZC;
		res = -EAGAIN;
	}
	if (!(flags & IORING_CQE_F_MORE)) {
		zc_end(u, z); /* no notification will come */
	} else {
		TEST_COUNT(zc_more, 1);
		z->waiting = true;
		f->c->refs++; /* the session waits for the notification */
		if (res > 0 && !u->closing_all) {
			/* Sent, but held until the notification (on_send
			 * counts them out of the buffered bytes: back in). */
			z->held = (uint32_t)res;
			f->zc_held += (size_t)res;
			RB_STAT_ADD(w, buffered, (uint64_t)res);
		}
		if (u->closing_all) /* past the stop deadline: no more waiting */
			zc_detach(w, u, f->c);
	}
	on_send(w, u, f, res);
}

/* ---- the relay's upstream connect ---- */

static void upstream_failed(struct rb_worker *w, struct uring *u, struct uconn *c, int err)
{
	unsigned sup;

	RB_STAT_ADD(w, upstream_failures, 1);
	if (rb__ratelimit_ok(&w->rl_upstream, &sup))
		rb__log(RB_LOG_ERR, "upstream %s: %s (%u more suppressed)", w->srv->upstream->url,
		        strerror(err), sup);
	/* The client gets an RST (conn_free: an error on a relay): a FIN would
	 * look like a complete answer. */
	conn_close(w, u, c, true);
}

static void upstream_connected(struct rb_worker *w, struct uconn *c)
{
	struct rb_upstream *up = w->srv->upstream;
	uint64_t us = rb__now_us() - c->s.connect_start_us;

	rb__timer_cancel(&w->timers, &c->s.timer);
	/* Later connections start from the address that worked. */
	__atomic_store_n(&up->last_ok, (c->s.up_first + c->s.up_tried) % up->n, __ATOMIC_RELAXED);
	rb__upstream_connected(w, us);
	rb__tune_accepted(w, c->s.sock[1].fd, c->s.sock[1].tcp);
}

/*
 * Connect to the next address not tried yet; false (with *err) if none is
 * left. IORING_OP_CONNECT on a blocking socket: one SQE, and its CQE is the
 * connect's result (no poll for writability, no SO_ERROR), on a registered
 * file like every other request of the session.
 */
static bool upstream_try(struct rb_worker *w, struct uring *u, struct uconn *c, int *err)
{
	const struct rb_upstream *up = w->srv->upstream;
	struct usock *k = &c->us[1];

	for (; c->s.up_tried < up->n; c->s.up_tried++) {
		unsigned i = (c->s.up_first + c->s.up_tried) % up->n;
		int fd = socket(up->addr[i].ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct io_uring_sqe *sqe;

		if (fd < 0) {
			*err = errno;
			continue;
		}
		k->sk->fd = fd;
		sock_register(u, k);
		sqe = get_sqe(u);
		/* The address lives in the server: it outlasts the request. */
		io_uring_prep_connect(sqe, sqe_fd(k), (const struct sockaddr *)&up->addr[i],
		                      up->len[i]);
		sqe_fixed(sqe, k);
		io_uring_sqe_set_data64(sqe, tag(k, OP_CONNECT));
		k->flags |= US_CONNECTING;
		c->refs++;
		return true;
	}
	return false;
}

static void on_connect(struct rb_worker *w, struct uring *u, struct usock *k, int res)
{
	struct uconn *c = k->c;
	int err = -res;

	k->flags &= ~US_CONNECTING;
	c->refs--;
	if (!(c->flags & UC_CLOSING)) {
		if (res == 0) {
			upstream_connected(w, c);
		} else {
			sock_close(u, k);
			c->s.up_tried++;
			if (!upstream_try(w, u, c, &err)) {
				upstream_failed(w, u, c, err);
				return;
			}
		}
	}
	conn_advance(w, u, c);
}

static void connect_timeout(struct rb_timer *t, void *arg)
{
	struct rb_worker *w = arg;
	struct uconn *c = rb_container_of(t, struct uconn, s.timer);

	upstream_failed(w, w->model, c, ETIMEDOUT);
}

/* ---- --idle-timeout and --write-timeout: one timer per session ---- */

/* No timer per operation: the CQEs only store the time. */
static void timeouts_arm(struct rb_worker *w, struct uconn *c)
{
	rb__timer_arm(&w->timers, &c->s.idle_timer,
	              rb__timeouts_due(&w->srv->cfg, &c->s, conn_pending(c), rb__now_us()));
}

static void timeouts_fire(struct rb_timer *t, void *arg)
{
	struct uconn *c = rb_container_of(t, struct uconn, s.idle_timer);
	struct rb_worker *w = arg;
	struct uring *u = w->model;
	bool pending = conn_pending(c);

	if (c->flags & UC_CLOSING)
		return;
	switch (rb__timeouts_expired(&w->srv->cfg, &c->s, pending, rb__now_us())) {
	case RB_TIMEOUT_WRITE:
		/* As the reactor; a send stuck in flight is ended by the
		 * reset (conn_close). */
		rb__session_linger0(&c->s);
		conn_close_as(w, u, c, true, RB_CLOSE_WRITE_TIMEOUT);
		return;
	case RB_TIMEOUT_IDLE:
		if (pending)
			rb__session_linger0(&c->s);
		else
			for (unsigned i = 0; i < c->n_socks; i++)
				if (c->s.sock[i].fd >= 0 && !(c->us[i].flags & US_CONNECTING))
					shutdown(c->s.sock[i].fd, SHUT_WR);
		conn_close_as(w, u, c, pending, RB_CLOSE_IDLE);
		return;
	case RB_TIMEOUT_NONE:
		break;
	}
	timeouts_arm(w, c);
}

/* ---- sessions ---- */

/* The model's records beside the session's: a socket's receive, a flow's queue. */
static void conn_wire(struct uring *u, struct uconn *c)
{
	c->n_socks = (uint8_t)c->s.n_socks;
	c->n_flows = (uint8_t)c->s.n_flows;
	c->chargen = c->s.kind == RB_SESSION_CHARGEN;
	c->echo = c->s.kind == RB_SESSION_ECHO && !c->s.flow[0].copy;
	for (unsigned i = 0; i < c->n_socks; i++) {
		struct usock *k = &c->us[i];
		k->c = c;
		k->sk = &c->s.sock[i];
		k->slot = -1;
		rb_list_init(&k->link);
		if (k->sk->upstream)
			k->flags |= US_UPSTREAM;
	}
	for (unsigned i = 0; i < c->n_flows; i++) {
		struct uflow *f = &c->uf[i];
		struct rb_flow *rf = &c->s.flow[i];
		f->c = c;
		f->rf = rf;
		f->src = rf->src ? &c->us[rf->src - c->s.sock] : NULL;
		f->sink = rf->sink ? &c->us[rf->sink - c->s.sock] : NULL;
		if (f->src)
			f->src->in = f;
		if (f->sink)
			f->sink->out = f;
		f->kind = rf->copy == &rb__copy_sockperf ? UF_CHAIN
		          : !f->src                      ? UF_GEN
		          : !f->sink                     ? UF_DROP
		                                         : UF_SEGS;
		f->bufcap = c->n_flows > 1 ? u->relay_bufcap : u->conn_bufcap;
		f->iov = f->iov_inline;
		f->iov_cap = INLINE_IOV;
	}
}

/* Start serving: a relay connects its upstream; the first advance (arms
 * the receive). */
static void conn_start(struct rb_worker *w, struct uring *u, struct uconn *c)
{
	int err;

	if (w->srv->upstream) {
		/* Receiving from the client starts at once; its bytes wait in the
		 * flow (up to the cap) until the upstream is connected. */
		c->s.connect_start_us = rb__now_us();
		c->s.up_first = __atomic_load_n(&w->srv->upstream->last_ok, __ATOMIC_RELAXED);
		rb__timer_init(&c->s.timer, connect_timeout);
		rb__timer_arm(&w->timers, &c->s.timer,
		              c->s.connect_start_us + rb__ms_to_us(w->srv->cfg.connect_timeout_ms));
		if (!upstream_try(w, u, c, &err)) {
			upstream_failed(w, u, c, err);
			return;
		}
	}
	conn_advance(w, u, c);
}

static void impair_fire(struct rb_timer *t, void *arg)
{
	struct rb_session_impair *si = rb_container_of(t, struct rb_session_impair, timer);
	struct uconn *c = imp_conn(si);
	struct rb_worker *w = arg;
	struct uring *u = w->model;

	if (c->flags & UC_CLOSING)
		return;
	if (si->gate_us) {
		/* --accept-delay is over: serve it (unless we are stopping). */
		si->gate_us = 0;
		if (w->stopping) {
			conn_close_as(w, u, c, false, RB_CLOSE_SHUTDOWN);
			return;
		}
		for (unsigned i = 0; i < c->n_flows; i++)
			if (!(c->uf[i].imp && c->uf[i].imp->cut_done))
				c->s.flow[i].flags &= ~FLOW_STALLED;
		conn_start(w, u, c);
		return;
	}
	if (si->reset_by) {
		/* --reset-after: the RST once the kernel has delivered the N
		 * bytes (looked at every millisecond, for at most a second). */
		for (unsigned i = 0; i < c->n_flows; i++) {
			const struct uflow *f = &c->uf[i];
			if (f->imp && f->imp->cut_done && f->imp->cut == RB_CUT_RESET &&
			    sock_unsent(f->sink->sk->fd) > 0 && w->now_us < si->reset_by) {
				impair_arm(w, c, w->now_us + RB_US_PER_MS);
				return;
			}
		}
		impair_reset(w, u, c);
		return;
	}
	conn_advance(w, u, c);
}

/*
 * A new session draws its impairments (impair.c). Returns true if it is
 * not to be started now: refused (reset at once; c is gone), or waiting for
 * --accept-delay (the timer starts it).
 */
static bool impair_open(struct rb_worker *w, struct uring *u, struct uconn *c,
                        const struct rb_impair_set *is)
{
	struct rb_session_impair *si;

	/* The clock as it is now (it is kept per wake-up only while the
	 * impairments are there, and they may just have been set). */
	w->now_us = rb__now_us();
	si = rb__impair_session_new(&is->cfg, w->id, c->s.id, c->s.n_flows,
	                            c->s.kind == RB_SESSION_RELAY, w->now_us);
	if (!si)
		return false;
	c->s.imp = si;
	si->owner = &c->s;
	rb__timer_init(&si->timer, impair_fire);
	RB_STAT_ADD(w, impaired_sessions, 1);
	if (c->s.kind == RB_SESSION_ECHO || c->s.kind == RB_SESSION_RELAY)
		for (unsigned i = 0; i < c->n_flows; i++) {
			struct rb_flow_impair *fi = &si->flow[i];
			if (c->uf[i].kind == UF_SEGS &&
			    (fi->delay || fi->rate_bps || fi->slice_size || fi->cut != RB_CUT_NONE))
				c->uf[i].imp = c->s.flow[i].imp = fi;
		}
	/* An impaired echo leaves the fast path: conn_advance's loops apply
	 * them. (A gated one is not advanced before its gate opens.) */
	if (c->uf[0].imp)
		c->echo = false;
	if (si->refuse) {
		RB_STAT_ADD(w, impair_refused, 1);
		impair_reset(w, u, c);
		return true;
	}
	if (si->gate_us) {
		for (unsigned i = 0; i < c->n_flows; i++)
			c->s.flow[i].flags |= FLOW_STALLED;
		rb__timer_arm(&w->timers, &si->timer, si->gate_us);
		return true;
	}
	return false;
}

/* An accepted socket becomes a session: an echo, a relay, discard, chargen
 * or sockperf. */
static void conn_new(struct rb_worker *w, struct uring *u, int fd, bool tcp)
{
	const struct rb_config *cfg = &w->srv->cfg;
	bool relay = w->srv->upstream != NULL;
	unsigned n_flows = relay || cfg->service == RB_SERVICE_CHARGEN ? 2 : 1;
	struct uconn *c = calloc(1, sizeof(*c) + n_flows * sizeof(struct uflow));

	if (!c) {
		rb__refuse(w, fd, -ENOMEM);
		return;
	}
	if (!rb__worker_admit(w, fd)) {
		free(c);
		return;
	}
	/* The ring's own buffers carry the bytes: no copy strategy, but for
	 * sockperf's framing. */
	if (relay)
		rb__session_init_relay(&c->s, fd, tcp, NULL);
	else if (cfg->service == RB_SERVICE_DISCARD)
		rb__session_init_discard(&c->s, fd, tcp);
	else if (cfg->service == RB_SERVICE_CHARGEN)
		rb__session_init_chargen(&c->s, fd, tcp);
	else if (cfg->service == RB_SERVICE_SOCKPERF)
		rb__session_init_echo(&c->s, fd, tcp, &rb__copy_sockperf);
	else
		rb__session_init_echo(&c->s, fd, tcp, NULL);
	conn_wire(u, c);
	sock_register(u, &c->us[0]);
	rb__tune_accepted(w, fd, tcp);
	rb_list_add_tail(&u->conns, &c->s.all);
	RB_STAT_ADD(w, accepted, 1);
	RB_STAT_ADD(w, active, 1);
	rb__session_opened(w, &c->s);
	if (relay)
		c->s.sock[1].tcp = !w->srv->upstream->is_unix;
	if (cfg->idle_timeout_ms || cfg->write_timeout_ms) {
		rb__timer_init(&c->s.idle_timer, timeouts_fire);
		timeouts_arm(w, c);
	}
	if (w->srv->impair) {
		/* One load: the set may be replaced while we run (SIGHUP). */
		const struct rb_impair_set *is = __atomic_load_n(&w->srv->impair, __ATOMIC_ACQUIRE);
		if (is && is->session && impair_open(w, u, c, is))
			return; /* refused, or waiting for --accept-delay */
	}
	conn_start(w, u, c);
}

/* ---- listeners ---- */

static void listener_arm(struct uring *u, struct ulisten *l)
{
	struct io_uring_sqe *sqe = get_sqe(u);

	/* Accepted sockets stay blocking: io_uring polls them itself. */
	io_uring_prep_multishot_accept(sqe, l->fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, tag(l, OP_ACCEPT));
	l->armed = true;
	l->cancelled = false;
	u->wops++;
}

/* Once every accept of this worker has ended, it no longer holds the listening
 * sockets; the last worker to get there closes them, so new peers are refused
 * rather than left in a backlog. */
static void listeners_check_released(struct rb_worker *w, struct uring *u)
{
	if (u->listen_released || !rb__uring_udp_idle(u->udp))
		return;
	for (size_t i = 0; i < u->n_lst; i++)
		if (u->lst[i].armed)
			return;
	u->listen_released = true;
	rb__worker_release_listeners(w);
}

static void on_accept(struct rb_worker *w, struct uring *u, struct ulisten *l, int res,
                      unsigned flags)
{
	if (!(flags & IORING_CQE_F_MORE)) {
		l->armed = false;
		u->wops--;
	}
	if (res >= 0) {
		if (w->stopping) {
			close(res);
			RB_STAT_ADD(w, refused, 1);
		} else {
			conn_new(w, u, res, l->tcp);
		}
	} else if (rb__accept_error(w, l->fd, -res) == RB_ACCEPT_BACKOFF) {
		rb__timer_arm(&w->timers, &l->retry,
		              rb__now_us() + rb__ms_to_us(RB_ACCEPT_BACKOFF_MS));
	}
	if (l->armed)
		return;
	if (w->stopping)
		listeners_check_released(w, u);
	else if (!rb__timer_armed(&l->retry))
		listener_arm(u, l);
}

/* ---- control eventfd and stopping ---- */

static void ctl_arm(struct uring *u, int fd)
{
	struct io_uring_sqe *sqe = get_sqe(u);

	io_uring_prep_poll_add(sqe, fd, POLLIN);
	io_uring_sqe_set_data64(sqe, tag(u, OP_CTL));
	u->ctl_armed = true;
	u->wops++;
}

static void wcancel(struct uring *u, uint64_t target)
{
	struct io_uring_sqe *sqe = get_sqe(u);

	io_uring_prep_cancel64(sqe, target, 0);
	io_uring_sqe_set_data64(sqe, tag(NULL, OP_CANCEL));
	u->wops++;
}

static void close_all(struct rb_worker *w, struct uring *u);

/* A stop waits this long past its deadline for zero-copy notifications. */
#define ZC_GRACE_MS 1000

static void zc_grace_over(struct rb_timer *t, void *arg)
{
	struct rb_worker *w = arg;
	struct uring *u = w->model;

	struct rb_list *it, *next;

	(void)t;
	u->zc_give_up = true;
	/* Sessions whose sockets would not reset: let them go; the kernel may
	 * still read the buffers, which stay held (and are left allocated at
	 * exit). */
	for (it = u->zc.next; it != &u->zc; it = it->next) {
		struct uzc *z = rb_container_of(it, struct uzc, link);
		if (!z->f || !z->waiting)
			continue;
		z->f->zc_held -= z->held;
		z->f->zc_pending--;
		z->f->c->refs--;
		RB_STAT_SUB(w, buffered, z->held);
		z->held = 0;
		z->f = NULL;
	}
	for (it = u->conns.next; it != &u->conns; it = next) {
		next = it->next;
		conn_advance(w, u, rb_container_of(it, struct uconn, s.all));
	}
}

/* The stop deadline: what is still unsent is dropped (as the reactor does). */
static void stop_deadline(struct rb_timer *t, void *arg)
{
	struct rb_worker *w = arg;
	struct uring *u = w->model;

	(void)t;
	close_all(w, u);
	/* Sessions no longer wait for zero-copy notifications (zc_detach);
	 * the worker waits ZC_GRACE_MS more for them, then leaves their
	 * buffers allocated (the kernel may still read them). */
	if (u->n_zc)
		rb__timer_arm(&w->timers, &u->zc_timer, rb__now_us() + rb__ms_to_us(ZC_GRACE_MS));
}

/* The accept back-off is over: accept again, unless stopping meanwhile. */
static void listener_retry(struct rb_timer *t, void *arg)
{
	struct ulisten *l = rb_container_of(t, struct ulisten, retry);
	struct rb_worker *w = arg;

	if (!w->stopping && !l->armed)
		listener_arm(l->u, l);
}

static void worker_begin_stop(struct rb_worker *w, struct uring *u)
{
	struct rb_list *it, *next;

	if (!rb__worker_begin_stop(w, stop_deadline))
		return;
	for (size_t i = 0; i < u->n_lst; i++) {
		struct ulisten *l = &u->lst[i];
		rb__timer_cancel(&w->timers, &l->retry);
		if (l->armed && !l->cancelled) {
			wcancel(u, tag(l, OP_ACCEPT));
			l->cancelled = true;
		}
	}
	rb__uring_udp_stop(w, u->udp, false);
	listeners_check_released(w, u);
	/* Stop passing new input on: flush what is queued, FIN, drop input
	 * until the peer's FIN, then close each session. */
	for (it = u->conns.next; it != &u->conns; it = next) {
		struct uconn *c = rb_container_of(it, struct uconn, s.all);
		next = it->next;
		/* Not started yet (--accept-delay): closed when its gate opens. */
		if (c->s.imp && c->s.imp->gate_us)
			continue;
		for (unsigned i = 0; i < c->n_flows; i++)
			c->s.flow[i].flags |= FLOW_RD_EOF | FLOW_DISCARD;
		conn_advance(w, u, c);
	}
}

static void on_ctl(struct rb_worker *w, struct uring *u, int res)
{
	u->ctl_armed = false;
	u->wops--;
	if (rb__worker_control(w))
		worker_begin_stop(w, u);
	if (res != -ECANCELED && !u->ctl_cancelled)
		ctl_arm(u, w->ctl_fd);
}

static void close_all(struct rb_worker *w, struct uring *u)
{
	struct rb_list *it, *next;

	u->closing_all = true;
	rb__uring_udp_stop(w, u->udp, true);
	for (it = u->conns.next; it != &u->conns; it = next) {
		struct uconn *c = rb_container_of(it, struct uconn, s.all);
		next = it->next;
		/* As the readiness engines (a send in flight is part of the
		 * flow's bytes). */
		for (unsigned i = 0; i < c->n_socks; i++) {
			const struct usock *k = &c->us[i];
			if (k->sk->fd >= 0)
				rb__stop_deadline_close(w, k->sk->fd, k->out ? k->out->bytes : 0);
		}
		zc_detach(w, u, c);
		conn_close(w, u, c, false);
	}
}

/* ---- the loop ---- */

static void handle_cqe(struct rb_worker *w, struct uring *u, uint64_t ud, int res, unsigned flags)
{
	void *p = untag(ud);

	switch (ud & OP_MASK) {
	case OP_RECV:
		on_recv(w, u, p, res, flags);
		break;
	case OP_SEND:
		on_send(w, u, p, res);
		break;
	case OP_ZC:
		on_send_zc(w, u, p, res, flags);
		break;
	case OP_CANCEL: {
		struct uconn *c = p;
		if (!c) { /* the worker's: an accept's or the control poll's */
			u->wops--;
			break;
		}
		c->refs--;
		conn_advance(w, u, c);
		break;
	}
	case OP_CONNECT:
		on_connect(w, u, p, res);
		break;
	case OP_ACCEPT:
		on_accept(w, u, p, res, flags);
		break;
	case OP_CTL:
		on_ctl(w, u, res);
		break;
	case OP_UDP:
		if (p && u->udp) {
			rb__uring_udp_cqe(w, u->udp, p, res, flags);
			break;
		}
		__attribute__((fallthrough));
	default: {
		/* Not ours: every submission is tagged. Report it once a second
		 * and go on; its target (if any) is not touched. */
		unsigned sup;
		if (rb__ratelimit_ok(&u->rl_unknown, &sup))
			rb__log(RB_LOG_ERR,
			        "uring: completion with unknown operation %u (res %d, %u more "
			        "suppressed)",
			        (unsigned)(ud & OP_MASK), res, sup);
		break;
	}
	}
}

/*
 * Connections waiting for buffers, then those that used their read budget:
 * the waiters have waited longer, and re-arming the busy ones first would
 * hand them the buffers just returned.
 */
static void run_lists(struct rb_worker *w, struct uring *u)
{
	struct rb_list snap;

	rb__uring_udp_poll(w, u->udp);
	/* ENOBUFS means the ring was dry when the kernel looked: double it
	 * (up to --uring-buffers and the worker memory cap). */
	if (u->want_grow) {
		u->want_grow = false;
		if (u->nalloc < u->nbufs && buf_grow(w, u, u->nalloc) == 0)
			RB_STAT_ADD(w, memory_waits, 1);
	}
	/* Wake about as many waiters as there are buffers: each needs one. */
	for (unsigned n = u->ring_free + u->to_publish; n > 0 && !rb_list_empty(&u->bufwait); n--) {
		struct usock *k = rb_container_of(u->bufwait.next, struct usock, link);
		rb_list_del(&k->link);
		k->flags &= ~US_BUFWAIT;
		/* sockperf answers that waited for chunks go first. */
		if (k->in && k->in->kind == UF_CHAIN && k->in->rf->stage_len &&
		    !(k->c->flags & UC_CLOSING) && !flow_frame(w, u, k->in))
			continue;
		conn_advance(w, u, k->c);
	}
	rb_list_init(&snap);
	rb_list_splice_tail(&snap, &u->ready);
	for (struct rb_list *it; (it = rb_list_pop(&snap));) {
		struct usock *k = rb_container_of(it, struct usock, link);
		k->flags &= ~US_QUEUED;
		conn_advance(w, u, k->c);
	}
}

static bool worker_done(struct rb_worker *w, struct uring *u)
{
	if (!w->stopping)
		return false;
	listeners_check_released(w, u); /* UDP's last CQEs may have come in */
	if (!rb_list_empty(&u->conns) || !u->listen_released)
		return false;
	/* The kernel may still read the buffers of zero-copy sends. */
	if (u->n_zc && !u->zc_give_up)
		return false;
	if (u->ctl_armed && !u->ctl_cancelled) {
		wcancel(u, tag(u, OP_CTL));
		u->ctl_cancelled = true;
	}
	return u->wops == 0;
}

/* Publish the SQEs prepared since the last call (the SQ tail, with release
 * order so the kernel sees them filled) and return how many the kernel has
 * not consumed yet. Not for SQPOLL rings. */
static unsigned sq_publish(struct io_uring *ring)
{
	struct io_uring_sq *sq = &ring->sq;

	if (sq->sqe_head != sq->sqe_tail) {
		sq->sqe_head = sq->sqe_tail;
		__atomic_store_n(sq->ktail, sq->sqe_tail, __ATOMIC_RELEASE);
	}
	return sq->sqe_tail - __atomic_load_n(sq->khead, __ATOMIC_ACQUIRE);
}

/*
 * Submit and wait in one io_uring_enter, for 1 + light CQEs: a light send
 * (conn_send) usually completes inline during this very call, and waiting
 * for one CQE would then return at once, without the receive the worker is
 * really waiting for, and cost a second enter. A send that does not
 * complete inline must not hold up the CQEs that did arrive: min_wait_usec
 * (Linux 6.12) returns with whatever is there after batch_us, and a send
 * whose CQE someone waits for is never light.
 */
static int ring_wait_batch(struct uring *u, unsigned light, int64_t timeout_us)
{
	/* min_wait_usec needs a timeout, and is cut short by it: nothing to
	 * time, so one long enough never to matter. */
	struct __kernel_timespec ts = {.tv_sec = 3600};
	struct rb_uring_getevents_arg arg = {.sigmask_sz = _NSIG / 8,
	                                     .min_wait_usec = u->batch_us,
	                                     .ts = (uint64_t)(uintptr_t)&ts};
	unsigned flags = IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG;
	unsigned submit = sq_publish(&u->ring);
	int fd = u->ring.ring_fd;
	long rc;

	if (timeout_us >= 0)
		ts = rb__timeout_kts(timeout_us);
	if (u->reg_ring) {
		fd = u->ring.enter_ring_fd;
		flags |= IORING_ENTER_REGISTERED_RING;
	}
	if (light)
		TEST_COUNT(batched_waits, 1);
	rc = syscall(__NR_io_uring_enter, fd, submit, 1 + light, flags, &arg, sizeof(arg));
	if (rc < 0)
		rc = -errno;
	if (rc == -ETIME || rc == -EINTR || rc == -EBUSY || rc == -EAGAIN)
		return 0;
	return rc < 0 ? (int)rc : 0;
}

/* Wait for a completion, or timeout_us (-1: none; exact, in a timespec). */
static int ring_wait(struct uring *u, int64_t timeout_us)
{
	struct io_uring_cqe *cqe;
	int rc;

	if (u->batch)
		return ring_wait_batch(u, light_sends(u), timeout_us);
	if (timeout_us < 0) {
		rc = io_uring_submit_and_wait(&u->ring, 1);
	} else {
		struct __kernel_timespec ts = rb__timeout_kts(timeout_us);
		rc = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, NULL);
	}
	/* A timeout or a signal just means: look at the clock and the CQ ring. */
	if (rc == -ETIME || rc == -EINTR || rc == -EBUSY || rc == -EAGAIN)
		return 0;
	return rc < 0 ? rc : 0;
}

/*
 * Copy each batch out and release its CQ slots before handling it: handling
 * may have to submit (a full SQ), and the kernel then needs room in the CQ
 * ring for what it completes.
 */
static void drain_cqes(struct rb_worker *w, struct uring *u)
{
	struct io_uring_cqe *cqes[CQE_BATCH];
	struct {
		uint64_t ud;
		int res;
		unsigned flags;
	} ev[CQE_BATCH];
	unsigned n;

	while ((n = io_uring_peek_batch_cqe(&u->ring, cqes, CQE_BATCH)) > 0) {
		for (unsigned i = 0; i < n; i++) {
			ev[i].ud = cqes[i]->user_data;
			ev[i].res = cqes[i]->res;
			ev[i].flags = cqes[i]->flags;
		}
		io_uring_cq_advance(&u->ring, n);
		RB_STAT_ADD(w, events, n);
		for (unsigned i = 0; i < n; i++)
			handle_cqe(w, u, ev[i].ud, ev[i].res, ev[i].flags);
	}
}

static void update_stats(struct rb_worker *w, struct uring *u)
{
	RB_STAT_MAX(w, peak_buffered, w->st.buffered);
	__atomic_store_n(&w->st.chunks_allocated, w->pool.allocated, __ATOMIC_RELAXED);
	__atomic_store_n(&w->st.chunks_cached, (uint64_t)w->pool.n_free + u->ring_free,
	                 __ATOMIC_RELAXED);
	__atomic_store_n(&w->st.chunks_live, w->pool.live, __ATOMIC_RELAXED);
}

/* After a fatal error: cancel everything and wait (bounded) for the CQEs, so
 * the kernel writes into no buffer after fini frees it. */
static void emergency_drain(struct rb_worker *w, struct uring *u)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
	uint64_t until = rb__now_us() + rb__ms_to_us(1000);

	if (sqe) {
		io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
		io_uring_sqe_set_data64(sqe, tag(NULL, OP_CANCEL));
		u->wops++;
	}
	close_all(w, u);
	while ((!rb_list_empty(&u->conns) || u->wops || !rb__uring_udp_idle(u->udp)) &&
	       rb__now_us() < until) {
		if (ring_wait(u, (int64_t)rb__ms_to_us(100)) < 0)
			break;
		drain_cqes(w, u);
	}
}

/* liburing 2.3 declares io_uring_enable_rings but does not export it. */
static int ring_enable(struct io_uring *ring)
{
	if (syscall(__NR_io_uring_register, ring->ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0) <
	    0)
		return -errno;
	return 0;
}

static int uring_run(struct rb_worker *w)
{
	struct uring *u = w->model;
	int rc;

	/* The ring was created disabled in another thread; enabling it here
	 * makes this thread its single issuer. */
	rc = ring_enable(&u->ring);
	if (rc < 0) {
		rb__log(RB_LOG_ERR, "uring: cannot enable the ring: %s", strerror(-rc));
		return rc;
	}
	u->enabled = true;
	if (rb__uring_caps()->reg_ring)
		u->reg_ring = io_uring_register_ring_fd(&u->ring) == 1;
	buf_grow(w, u, INITIAL_BUFS);
	ctl_arm(u, w->ctl_fd);
	for (size_t i = 0; i < u->n_lst; i++)
		listener_arm(u, &u->lst[i]);
	rb__uring_udp_start(w, u->udp);
	for (;;) {
		if (__atomic_load_n(&w->srv->stop_requested, __ATOMIC_RELAXED))
			worker_begin_stop(w, u);
		run_lists(w, u);
		if (worker_done(w, u))
			break;
		buf_publish(u);
		/* The timers' next deadline is the wait's timeout (an io_uring
		 * timeout); the common case reads no clock. */
		rc = ring_wait(u,
		               w->timers.root ? rb__timers_timeout(&w->timers, rb__now_us()) : -1);
		if (rc < 0) {
			rb__log(RB_LOG_ERR, "uring wait: %s", strerror(-rc));
			emergency_drain(w, u);
			return rc;
		}
		RB_STAT_ADD(w, wakeups, 1);
		/* The clock, for the timers and for what the CQEs note (the
		 * timeouts' last I/O, impairments' arrival times): read once per
		 * wake-up, and only when something needs it. A session with a
		 * timeout has its timer armed; impairments may come at run time. */
		if (w->timers.root || __atomic_load_n(&w->srv->impair, __ATOMIC_RELAXED))
			w->now_us = rb__now_us();
		drain_cqes(w, u);
		if (w->timers.root)
			rb__timers_run(&w->timers, w->now_us, w);
		update_stats(w, u);
	}
	update_stats(w, u);
	if (u->reg_ring)
		io_uring_unregister_ring_fd(&u->ring); /* per-thread: undo it here */
	return 0;
}

/*
 * A sparse table of registered files, one slot per descriptor the process
 * may open: a request on a registered file takes no file reference (an
 * atomic pair per operation otherwise). Without it, plain descriptors.
 */
static void files_register(struct uring *u)
{
	struct rlimit rl;
	unsigned n = 1024;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
		n = rl.rlim_cur < 65536 ? (unsigned)rl.rlim_cur : 65536;
	u->slot_free = malloc(n * sizeof(*u->slot_free));
	if (!u->slot_free || io_uring_register_files_sparse(&u->ring, n) < 0) {
		free(u->slot_free);
		u->slot_free = NULL;
		return;
	}
	u->n_slots = n;
	for (unsigned i = 0; i < n; i++)
		u->slot_free[i] = (int)(n - 1 - i);
	u->n_slot_free = n;
}

/* Ring setup flags in preference order; the first the kernel accepts wins. */
static int ring_create(struct uring *u, const struct rb_config *cfg)
{
	static const struct {
		unsigned flags;
		const char *name;
	} plain[] =
	        {
	                {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, "defer-taskrun"},
	                {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN, "coop-taskrun"},
	                {IORING_SETUP_COOP_TASKRUN, "coop-taskrun"},
	                {0, "plain"},
	        },
	  sqpoll[] = {
	          {IORING_SETUP_SQPOLL | IORING_SETUP_SINGLE_ISSUER, "sqpoll"},
	          {IORING_SETUP_SQPOLL, "sqpoll"},
	  };
	bool use_sqpoll = cfg->uring_sqpoll_ms > 0;
	size_t n =
	        use_sqpoll ? sizeof(sqpoll) / sizeof(sqpoll[0]) : sizeof(plain) / sizeof(plain[0]);
	int rc = -EINVAL;

	for (size_t i = 0; i < n; i++) {
		struct io_uring_params p;
		memset(&p, 0, sizeof(p));
		p.flags = (use_sqpoll ? sqpoll[i].flags : plain[i].flags) |
		          IORING_SETUP_R_DISABLED | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE |
		          IORING_SETUP_CLAMP;
		/* Multishot requests post many CQEs per SQE. */
		p.cq_entries = cfg->uring_entries * 8;
		p.sq_thread_idle = cfg->uring_sqpoll_ms;
		rc = io_uring_queue_init_params(cfg->uring_entries, &u->ring, &p);
		if (rc == 0) {
			u->mode = use_sqpoll ? sqpoll[i].name : plain[i].name;
			u->sqpoll = use_sqpoll;
			return 0;
		}
		if (rc != -EINVAL)
			break;
	}
	return rc;
}

/* "yes", "off" (switched off by --uring-off) or "no (kernel)". */
static const char *feature_state(bool used, bool kernel)
{
	return used ? "yes" : kernel ? "off" : "no (kernel)";
}

static int uring_worker_init(struct rb_worker *w)
{
	char batch_state[32], zc_state[40], napi_state[48] = "";
	const struct rb_config *cfg = &w->srv->cfg;
	size_t per_conn;
	struct uring *u;
	int rc;

	const struct rb_uring_caps *caps = rb__uring_caps();

	rc = rb__uring_probe(NULL, 0);
	if (rc < 0)
		return rc;
	u = calloc(1, sizeof(*u));
	if (!u)
		return -ENOMEM;
	w->model = u;
	rb_list_init(&u->conns);
	rb_list_init(&u->ready);
	rb_list_init(&u->bufwait);
	rb_list_init(&u->zc);
	rb__timer_init(&u->zc_timer, zc_grace_over);
	u->bufsize = (uint32_t)cfg->chunk_size;
	u->nbufs = cfg->uring_buffers;
	u->mshot_limit = caps->mshot_limit && !rb__uring_test_single_recv;
	/* Twice the buffers the byte cap needs (receives may land partly
	 * filled), but never more than half the ring. */
	per_conn = 2 * ((cfg->conn_buffer + u->bufsize - 1) / u->bufsize);
	if (per_conn < 2)
		per_conn = 2;
	if (per_conn > (u->nbufs > 1 ? u->nbufs / 2 : 1))
		per_conn = u->nbufs > 1 ? u->nbufs / 2 : 1;
	u->conn_bufcap = (unsigned)per_conn;
	/* A relay's two flows together hold at most one echo's share of the ring. */
	u->relay_bufcap = u->conn_bufcap;
	if (u->relay_bufcap > u->nbufs / 4)
		u->relay_bufcap = u->nbufs >= 4 ? u->nbufs / 4 : 1;
	rc = ring_create(u, cfg);
	if (rc < 0)
		return rc;
	u->ring_ok = true;
	u->chunk = calloc(u->nbufs, sizeof(*u->chunk));
	u->meta = calloc(u->nbufs, sizeof(*u->meta));
	u->shadow = calloc(u->nbufs, sizeof(*u->shadow));
	if (!u->chunk || !u->meta || !u->shadow)
		return -ENOMEM;
	u->seg_free = SEG_NIL;
	u->bundle = caps->bundle && !(cfg->uring_off & RB_URING_BUNDLE);
	u->inc = caps->inc && !(cfg->uring_off & RB_URING_INC);
	/* Batching needs our own io_uring_enter; an SQPOLL ring submits by itself. */
	/* Opt-in (--uring-batch-us): it halves the wake-ups of a lone
	 * connection but costs more CPU per message here (docs/uring.md). */
	u->batch = caps->min_wait && !(cfg->uring_off & RB_URING_BATCH) && !u->sqpoll &&
	           cfg->uring_batch_us > 0;
	u->batch_us = cfg->uring_batch_us;
	u->zc_min = caps->send_zc && !(cfg->uring_off & RB_URING_SEND_ZC) ? cfg->uring_send_zc : 0;
	rc = rb__uring_bufring_register(&u->ring, u->nbufs, BGID, u->inc ? IOU_PBUF_RING_INC : 0,
	                                &u->br, &u->br_len);
	if (rc < 0)
		return rc;
	files_register(u);
	/* Stream listeners get an accept; UDP ones are uring_udp.c's. */
	for (size_t i = 0; i < w->n_listeners; i++) {
		struct ulisten *l = &u->lst[u->n_lst];
		if (w->listeners[i].is_udp)
			continue;
		l->fd = w->listeners[i].fd;
		l->tcp = w->listeners[i].tcp;
		l->u = u;
		rb__timer_init(&l->retry, listener_retry);
		u->n_lst++;
	}
	rc = rb__uring_udp_create(w,
	                          &(struct rb_uudp_host){.ring = &u->ring,
	                                                 .get_sqe = udp_get_sqe,
	                                                 .ctx = u,
	                                                 .tag = OP_UDP,
	                                                 .bgid = BGID_UDP},
	                          &u->udp);
	if (rc < 0)
		return rc;
	if (cfg->busy_poll_us) {
		/* uring_check found the kernel willing; this ring's own. */
		rc = rb__uring_napi_register(&u->ring, cfg->busy_poll_us);
		if (rc < 0)
			return rc;
		snprintf(napi_state, sizeof(napi_state), ", napi busy poll %u us",
		         cfg->busy_poll_us);
		if (w->id == 0)
			rb__log(RB_LOG_INFO, "busy poll %u us: sockets yes, uring napi yes",
			        cfg->busy_poll_us);
	}
	snprintf(batch_state, sizeof(batch_state), "min-wait %u us", u->batch_us);
	snprintf(zc_state, sizeof(zc_state), "%zu", u->zc_min);
	snprintf(u->detail, sizeof(u->detail),
	         "%s, %u entries, %s%s, %u buffers of %u, recv %s, bundles: %s, "
	         "incremental buffers: %s, batching: %s, send zc: %s%s%s%s",
	         u->mode, cfg->uring_entries, caps->reg_ring ? "registered ring fd" : "ring fd",
	         u->n_slots ? ", fixed files" : "", u->nbufs, u->bufsize,
	         u->mshot_limit ? "multishot+limit" : "single-shot",
	         feature_state(u->bundle, caps->bundle), feature_state(u->inc, caps->inc),
	         u->batch ? batch_state : feature_state(false, caps->min_wait && !u->sqpoll),
	         u->zc_min ? zc_state : feature_state(false, caps->send_zc), napi_state,
	         u->udp ? ", " : "", rb__uring_udp_detail(u->udp));
	return 0;
}

/* --busy-poll: refused, with the reason, where the kernel will not register NAPI. */
static int uring_check(const struct rb_config *cfg, char *err, size_t errlen)
{
	return cfg->busy_poll_us ? rb__uring_napi_check(cfg->busy_poll_us, err, errlen) : 0;
}

static const char *uring_detail(const struct rb_worker *w)
{
	const struct uring *u = w->model;

	return u ? u->detail : "";
}

static void uring_worker_fini(struct rb_worker *w)
{
	struct uring *u = w->model;

	if (!u)
		return;
	/* Only reached with operations in flight if run failed before its drain,
	 * or never ran (nothing was submitted then). */
	while (!rb_list_empty(&u->conns)) {
		struct uconn *c = rb_container_of(u->conns.next, struct uconn, s.all);
		c->flags |= UC_CLOSING;
		c->refs = 0;
		conn_free(w, u, c);
	}
	if (u->ring_ok)
		io_uring_queue_exit(&u->ring); /* also drops the buffer ring registration */
	rb__uring_udp_destroy(w, u->udp);
	if (u->br)
		munmap(u->br, u->br_len);
	/* Zero-copy sends whose notification never came (a stop gave up on
	 * them): the kernel may still read their buffers, which are therefore
	 * neither reused nor freed. */
	if (u->n_zc)
		rb__log(RB_LOG_ERR,
		        "uring: %u zero-copy sends still unconfirmed at exit; their buffers are "
		        "left allocated",
		        u->n_zc);
	while (!rb_list_empty(&u->zc)) {
		struct uzc *z = rb_container_of(u->zc.next, struct uzc, link);
		rb_list_del(&z->link);
		free(z);
	}
	for (unsigned i = 0; i < u->nalloc; i++)
		if (!u->meta || !u->meta[i].refs)
			rb_pool_put(&w->pool, u->chunk[i]);
	free(u->chunk);
	free(u->meta);
	free(u->shadow);
	free(u->seg);
	free(u->sent);
	free(u->slot_free);
	free(u);
	w->model = NULL;
}

const struct rb_model_ops rb__uring_model = {
        .worker_init = uring_worker_init,
        .run = uring_run,
        .worker_fini = uring_worker_fini,
        .detail = uring_detail,
        .check = uring_check,
};
