/* SPDX-License-Identifier: MIT */
/*
 * UDP on the io_uring engine (uring_udp.c): the worker's UDP listeners,
 * served with a multishot recvmsg into a buffer ring of their own and a
 * sendmsg back to each source. The ring's owner (proactor_uring.c) lends
 * the ring and routes the CQEs whose user_data carries `tag` here; this
 * file calls nothing of the owner's but the SQE callback it is given.
 */
#ifndef REBOUND_URING_UDP_H
#define REBOUND_URING_UDP_H

#include <stdbool.h>
#include <stdint.h>
#include <liburing.h>

struct rb_worker;
struct rb_uudp;

struct rb_uudp_host {
	struct io_uring *ring;
	/* A free SQE: the owner submits what is queued when the SQ is full. */
	struct io_uring_sqe *(*get_sqe)(void *ctx);
	void *ctx;
	uint64_t tag;  /* ORed into every user_data (pointers are 8-aligned) */
	unsigned bgid; /* the buffer group for the UDP buffer ring */
};

/* Sends in flight per UDP socket; a datagram that finds them all taken is
 * dropped and counted (datagram_drops), never queued. */
#define RB_UURING_UDP_SENDS 64
/* Buffers in the UDP ring at most (each holds any datagram). */
#define RB_UURING_UDP_BUFS 64

/* The UDP sockets among w's listeners, or *out = NULL if there are none.
 * 0 or -errno. */
int rb__uring_udp_create(struct rb_worker *w, const struct rb_uudp_host *h, struct rb_uudp **out);
/* In the worker's thread, with the ring enabled: arm every receive. */
void rb__uring_udp_start(struct rb_worker *w, struct rb_uudp *x);
/* A CQE whose user_data carried the tag; p is the user_data without it. */
void rb__uring_udp_cqe(struct rb_worker *w, struct rb_uudp *x, void *p, int res, unsigned flags);
/* Once per loop turn, before the wait: grow the ring, re-arm receives. */
void rb__uring_udp_poll(struct rb_worker *w, struct rb_uudp *x);
/* Stop receiving; with `hard` (the stop deadline) cancel the sends too. */
void rb__uring_udp_stop(struct rb_worker *w, struct rb_uudp *x, bool hard);
/* Nothing of UDP's is in flight: the ring holds none of its sockets. */
bool rb__uring_udp_idle(const struct rb_uudp *x);
/* Free everything (after idle, or when the ring is gone). NULL is a no-op. */
void rb__uring_udp_destroy(struct rb_worker *w, struct rb_uudp *x);
/* Buffers and payload room the ring had, for the start-up line. */
const char *rb__uring_udp_detail(const struct rb_uudp *x);

/* Test hooks, set before a server is created. */
struct rb_uring_udp_test {
	unsigned bufs;       /* UDP ring size (power of two), 0: the default */
	unsigned payload;    /* payload room per buffer, 0: any datagram */
	unsigned sends;      /* sends in flight per socket, 0: the default */
	uint64_t rearms;     /* receives armed again after a CQE without F_MORE */
	uint64_t enobufs;    /* receives ended by ENOBUFS */
	uint64_t peak_sends; /* most sends in flight on one socket */
};
extern struct rb_uring_udp_test rb__uring_udp_test;

#endif
