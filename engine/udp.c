/* SPDX-License-Identifier: MIT */
/*
 * UDP echo for the readiness engines: each datagram goes back to its sender
 * unchanged, zero-length ones included. Datagrams are received in batches
 * with recvmmsg into per-worker slots big enough for any datagram (so none
 * is truncated) and sent back with sendmmsg. A batch that cannot be sent yet
 * (EAGAIN) is kept and reading stops until it is gone: the backlog then
 * stays in the kernel's receive buffer, where UDP's own rules apply.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "internal.h"

/* Larger than any UDP payload (65,507 over IPv4, 65,527 over IPv6). */
#define SLOT_SIZE 65536u

struct rb_udp {
	int fd;
	bool can_read, can_write;
	bool pending;            /* budget ran out with work left */
	unsigned first, n;       /* unsent datagrams: msgs[first .. first + n) */
	unsigned char *slots;    /* UDP_BATCH slots of SLOT_SIZE, allocated on first use */
	struct mmsghdr msgs[RB_UDP_BATCH];
	struct iovec iov[RB_UDP_BATCH];
	struct sockaddr_storage addr[RB_UDP_BATCH];
};

struct rb_udp *rb__udp_create(int fd)
{
	struct rb_udp *u = calloc(1, sizeof(*u));

	if (!u)
		return NULL;
	u->fd = fd;
	u->can_write = true;
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
	free(u->slots);
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
	uint64_t bytes = 0;
	for (int i = 0; i < r; i++) {
		/* Echo exactly what arrived, to whoever sent it. */
		u->iov[i].iov_len = u->msgs[i].msg_len;
		bytes += u->msgs[i].msg_len;
	}
	/* A short batch means the receive queue is drained (as a short read). */
	if ((unsigned)r < RB_UDP_BATCH)
		u->can_read = false;
	u->first = 0;
	u->n = (unsigned)r;
	RB_STAT_ADD(w, bytes_in, bytes);
	RB_STAT_ADD(w, datagrams_in, (uint64_t)r);
	RB_STAT_ADD(w, buffered, bytes);
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
