/* SPDX-License-Identifier: MIT */
/*
 * UDP echo for the readiness engines: each datagram goes back to its sender
 * unchanged, zero-length ones included. Datagrams are received in batches
 * with recvmmsg into per-worker slots big enough for any datagram (so none
 * is truncated) and sent back with sendmmsg. A batch that cannot be sent yet
 * (EAGAIN) is kept and reading stops until it is gone: the backlog then
 * stays in the kernel's receive buffer, where UDP's own rules apply.
 *
 * Security posture (an echo answers anyone, so it can be aimed at a third
 * party, or at another echo to loop for ever): a datagram is not answered
 * if its source port is below 1024 (echo, daytime, chargen, DNS, NTP ...;
 * --udp-allow-low-ports), or is the port this socket serves (itself, or
 * another rebound on the same port: a loop), and each source address gets
 * at most --udp-rate datagrams a second (a token bucket; a loop that gets
 * through is broken by the first drop). Both are counted.
 *
 * Impairments (udp_impair.h, issue 13, shared with uring_udp.c): each
 * answer may be lost, corrupted (one bit flipped), duplicated (sent twice
 * in the batch) or delayed (copied to a queue ordered by due time and sent
 * by the socket's timer with sendmsg: with jitter, datagrams may be
 * reordered, as on a real network), each choice drawn from the socket's
 * generator, seeded from --seed and the worker (not the port, which may be
 * chosen by the kernel: a run must replay).
 */
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "internal.h"
#include "udp_impair.h"

/* Larger than any UDP payload (65,507 over IPv4, 65,527 over IPv6). */
#define SLOT_SIZE 65536u

/* Token buckets per source address: a fixed table, a slot per address hash;
 * a colliding address takes the slot over (it starts with a full bucket). */
#define RL_SLOTS 4096

struct rl_slot {
	unsigned char key[17]; /* family byte + address */
	uint64_t tokens_micro; /* millionths of a datagram */
	uint64_t last_us;
};

struct rb_udp_rl {
	struct rl_slot slot[RL_SLOTS];
};

struct rb_udp {
	int fd;
	struct rb_udp_guard guard; /* low and own ports, --udp-rate */
	bool can_read, can_write;
	bool pending;         /* budget ran out with work left */
	unsigned first, n;    /* unsent datagrams: msgs[first .. first + n) */
	unsigned char *slots; /* UDP_BATCH slots of SLOT_SIZE, allocated on first use */
	/* A batch's answers, twice over: duplicates take the second half. */
	struct mmsghdr msgs[2 * RB_UDP_BATCH];
	struct iovec iov[2 * RB_UDP_BATCH];
	struct sockaddr_storage addr[2 * RB_UDP_BATCH];
	unsigned gen_line;     /* chargen: the line the next answer starts with */
	struct rb_udp_imp imp; /* impairments: the generator, delayed answers */
};

static rb_udp_imp_send_fn delay_send;

struct rb_udp *rb__udp_create(int fd, int port)
{
	struct rb_udp *u = calloc(1, sizeof(*u));

	if (!u)
		return NULL;
	u->fd = fd;
	u->guard.port = port;
	u->can_write = true;
	for (unsigned i = 0; i < 2 * RB_UDP_BATCH; i++)
		u->msgs[i].msg_hdr = (struct msghdr){
		        .msg_name = &u->addr[i],
		        .msg_namelen = sizeof(u->addr[i]),
		        .msg_iov = &u->iov[i],
		        .msg_iovlen = 1,
		};
	rb__udp_imp_init(&u->imp, delay_send);
	return u;
}

void rb__udp_destroy(struct rb_worker *w, struct rb_udp *u)
{
	if (!u)
		return;
	if (u->n) {
		uint64_t bytes = 0;
		for (unsigned i = u->first; i < u->first + u->n; i++)
			bytes += u->iov[i].iov_len;
		RB_STAT_SUB(w, buffered, bytes);
	}
	rb__udp_imp_fini(w, &u->imp);
	free(u->slots);
	rb__udp_guard_fini(&u->guard);
	free(u);
}

bool rb__udp_pending(const struct rb_udp *u)
{
	return u->pending;
}

uint32_t rb__udp_interest(const struct rb_udp *u)
{
	return u->n ? RB_WRITE : RB_READ;
}

/* Send what is queued; false if the socket is full. */
static bool udp_send(struct rb_worker *w, struct rb_udp *u)
{
	while (u->n > 0) {
		int r = sendmmsg(u->fd, &u->msgs[u->first], u->n, MSG_DONTWAIT);
		RB_STAT_ADD(w, write_calls, 1);
		if (r > 0) {
			uint64_t bytes = 0;
			for (int i = 0; i < r; i++)
				bytes += u->iov[u->first + (unsigned)i].iov_len;
			RB_STAT_ADD(w, bytes_out, bytes);
			RB_STAT_SUB(w, buffered, bytes);
			RB_STAT_ADD(w, datagrams_out, (uint64_t)r);
			u->first += (unsigned)r;
			u->n -= (unsigned)r;
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == ENOBUFS)) {
			u->can_write = false;
			return false;
		}
		/* The first datagram cannot be sent at all (an unreachable or
		 * forbidden destination): drop it alone and go on. */
		RB_STAT_SUB(w, buffered, u->iov[u->first].iov_len);
		RB_STAT_ADD(w, datagram_drops, 1);
		u->first++;
		u->n--;
	}
	return true;
}

static uint64_t fnv1a(const unsigned char *p, size_t n)
{
	uint64_t h = 1469598103934665603ull;

	while (n--)
		h = (h ^ *p++) * 1099511628211ull;
	return h;
}

/* May this source get one more answer now? (token bucket, burst = rate) */
static bool rate_ok(struct rb_worker *w, struct rb_udp_guard *g, const struct sockaddr *sa,
                    uint64_t now)
{
	unsigned rate = w->srv->cfg.udp_rate;
	unsigned char key[17] = {0};
	struct rl_slot *sl;
	uint64_t dt, full = (uint64_t)rate * 1000000u;

	if (!rate)
		return true;
	if (!g->rl && !(g->rl = calloc(1, sizeof(*g->rl))))
		return true; /* no memory for the table: fail open, never stall */
	key[0] = (unsigned char)sa->sa_family;
	if (sa->sa_family == AF_INET)
		memcpy(key + 1, (const char *)sa + offsetof(struct sockaddr_in, sin_addr), 4);
	else if (sa->sa_family == AF_INET6)
		memcpy(key + 1, (const char *)sa + offsetof(struct sockaddr_in6, sin6_addr), 16);
	sl = &g->rl->slot[fnv1a(key, sizeof(key)) % RL_SLOTS];
	if (memcmp(sl->key, key, sizeof(key)) != 0 || !sl->last_us) {
		memcpy(sl->key, key, sizeof(key));
		sl->tokens_micro = full;
		sl->last_us = now;
	}
	/* A second fills the bucket: no more, so the product stays small. */
	dt = now - sl->last_us < 1000000u ? now - sl->last_us : 1000000u;
	sl->last_us = now;
	sl->tokens_micro += dt * rate; /* us x datagrams/s = millionths */
	if (sl->tokens_micro > full)
		sl->tokens_micro = full;
	if (sl->tokens_micro < 1000000u)
		return false;
	sl->tokens_micro -= 1000000u;
	return true;
}

/* Read through memcpy: `sa` may be a struct sockaddr, aligned to 2 only. */
static int source_port(const struct sockaddr *sa)
{
	uint16_t port;

	if (sa->sa_family == AF_INET)
		memcpy(&port, (const char *)sa + offsetof(struct sockaddr_in, sin_port), 2);
	else if (sa->sa_family == AF_INET6)
		memcpy(&port, (const char *)sa + offsetof(struct sockaddr_in6, sin6_port), 2);
	else
		return -1;
	return ntohs(port);
}

bool rb__udp_guard_ok(struct rb_worker *w, struct rb_udp_guard *g, const struct sockaddr *from,
                      uint64_t now)
{
	int port = source_port(from);

	if (port >= 0 && ((port < 1024 && !w->srv->cfg.udp_low_ports) || port == g->port)) {
		RB_STAT_ADD(w, datagrams_refused, 1);
		return false;
	}
	if (!rate_ok(w, g, from, now)) {
		RB_STAT_ADD(w, datagrams_limited, 1);
		return false;
	}
	return true;
}

void rb__udp_guard_fini(struct rb_udp_guard *g)
{
	free(g->rl);
	g->rl = NULL;
}

/* A delayed answer is due (udp_impair.c's timer): sent at once. */
static int delay_send(struct rb_worker *w, struct rb_udp_imp *ui, struct rb_dgram *d)
{
	struct rb_udp *u = rb_container_of(ui, struct rb_udp, imp);
	ssize_t r;

	do {
		r = sendmsg(u->fd, &d->msg, MSG_DONTWAIT);
		RB_STAT_ADD(w, write_calls, 1);
	} while (r < 0 && errno == EINTR);
	if (r < 0 && (errno == EAGAIN || errno == ENOBUFS))
		return -EAGAIN;
	if (r < 0) {
		RB_STAT_ADD(w, datagram_drops, 1);
	} else {
		RB_STAT_ADD(w, bytes_out, d->len);
		RB_STAT_ADD(w, datagrams_out, 1);
	}
	rb__udp_imp_done(w, ui, d);
	return 0;
}

/* Receive one batch; returns the count, 0 if none is waiting, -1 on memory. */
static int udp_recv(struct rb_worker *w, struct rb_udp *u)
{
	int r;

	if (!u->slots) {
		u->slots = malloc((size_t)RB_UDP_BATCH * SLOT_SIZE);
		if (!u->slots)
			return -1;
	}
	for (unsigned i = 0; i < RB_UDP_BATCH; i++) {
		u->iov[i].iov_base = u->slots + (size_t)i * SLOT_SIZE;
		u->iov[i].iov_len = SLOT_SIZE;
		u->msgs[i].msg_hdr = (struct msghdr){
		        .msg_name = &u->addr[i],
		        .msg_namelen = sizeof(u->addr[i]),
		        .msg_iov = &u->iov[i],
		        .msg_iovlen = 1,
		};
	}
	for (;;) {
		r = recvmmsg(u->fd, u->msgs, RB_UDP_BATCH, MSG_DONTWAIT, NULL);
		RB_STAT_ADD(w, read_calls, 1);
		if (r >= 0 || errno != EINTR)
			break;
	}
	if (r < 0) {
		if (errno != EAGAIN)
			rb__log(RB_LOG_DEBUG, "recvmmsg: %s", strerror(errno));
		u->can_read = false;
		return 0;
	}
	enum rb_service sv = w->srv->cfg.service;
	uint64_t bytes = 0, out = 0, now = rb__now_us();
	unsigned keep = 0, extra = 0;
	const struct rb_impair *imp = w->srv->impair ? rb__udp_imp_set(w, &u->imp) : NULL;
	bool twice[RB_UDP_BATCH];

	/* A short batch means the receive queue is drained (as a short read). */
	if ((unsigned)r < RB_UDP_BATCH)
		u->can_read = false;
	RB_STAT_ADD(w, datagrams_in, (uint64_t)r);
	if (sv == RB_SERVICE_DISCARD) {
		/* Nothing goes back, so nothing to refuse or limit. */
		for (int i = 0; i < r; i++)
			bytes += u->msgs[i].msg_len;
		RB_STAT_ADD(w, bytes_in, bytes);
		u->first = u->n = 0;
		return r;
	}
	for (int i = 0; i < r; i++) {
		if (!rb__udp_guard_ok(w, &u->guard, (const struct sockaddr *)&u->addr[i], now))
			continue;
		if (sv == RB_SERVICE_SOCKPERF &&
		    !rb__sockperf_answer(u->iov[i].iov_base, u->msgs[i].msg_len))
			continue;
		/* Echo exactly what arrived, to whoever sent it. The slots stay
		 * in place; only the headers move down over the dropped ones. */
		if ((unsigned)i != keep) {
			struct iovec tmp = u->iov[keep];
			struct sockaddr_storage ta = u->addr[keep];
			u->iov[keep] = u->iov[i];
			u->iov[i] = tmp;
			u->addr[keep] = u->addr[i];
			u->addr[i] = ta;
			u->msgs[keep].msg_len = u->msgs[i].msg_len;
			u->msgs[keep].msg_hdr.msg_namelen = u->msgs[i].msg_hdr.msg_namelen;
		}
		bytes += u->msgs[keep].msg_len;
		if (sv == RB_SERVICE_CHARGEN) {
			/* The next lines of the stream, whatever arrived. */
			const unsigned char *pat = rb__chargen_pattern();
			u->iov[keep].iov_base =
			        (void *)(pat + (size_t)u->gen_line * RB_CHARGEN_LINE);
			u->iov[keep].iov_len = RB_CHARGEN_UDP_LINES * RB_CHARGEN_LINE;
			u->gen_line = (u->gen_line + RB_CHARGEN_UDP_LINES) % RB_CHARGEN_LINES;
		} else {
			u->iov[keep].iov_len = u->msgs[keep].msg_len;
		}
		if (imp) {
			unsigned stay = rb__udp_imp_answer(
			        w, &u->imp, imp, &u->addr[keep], u->msgs[keep].msg_hdr.msg_namelen,
			        u->iov[keep].iov_base, u->iov[keep].iov_len,
			        sv != RB_SERVICE_CHARGEN, now);
			if (stay == 0)
				continue; /* its slot is kept: the next answer swaps it */
			twice[keep] = stay == 2;
			extra += stay - 1;
			out += (stay - 1) * u->iov[keep].iov_len;
		}
		out += u->iov[keep].iov_len;
		keep++;
	}
	if (extra) {
		/* Duplicates go right after their first copy: spread the batch
		 * out from the end, so nothing is overwritten before it moves. */
		unsigned d = keep + extra;
		for (unsigned j = keep; j-- > 0;) {
			for (unsigned c = twice[j] ? 2 : 1; c > 0; c--) {
				d--;
				if (d == j)
					continue;
				u->iov[d] = u->iov[j];
				u->addr[d] = u->addr[j];
				u->msgs[d].msg_hdr.msg_namelen = u->msgs[j].msg_hdr.msg_namelen;
			}
		}
		keep += extra;
	}
	u->first = 0;
	u->n = keep;
	RB_STAT_ADD(w, bytes_in, bytes);
	RB_STAT_ADD(w, buffered, out);
	RB_STAT_MAX(w, peak_buffered, w->st.buffered);
	return r;
}

void rb__udp_run(struct rb_worker *w, struct rb_udp *u, uint32_t ev)
{
	/* A few batches per wakeup, then the others get a turn. */
	unsigned budget = 8;

	if (ev & (RB_READ | RB_HUP))
		u->can_read = true;
	if (ev & RB_WRITE)
		u->can_write = true;
	u->pending = false;
	while (budget > 0) {
		if (u->n > 0) {
			if (!u->can_write || !udp_send(w, u))
				return;
			continue;
		}
		if (!u->can_read || w->stopping)
			return;
		if (udp_recv(w, u) < 0) {
			u->pending = true;
			return;
		}
		budget--;
	}
	if (u->n > 0 || u->can_read) {
		u->pending = true;
		RB_STAT_ADD(w, requeues, 1);
	}
}
