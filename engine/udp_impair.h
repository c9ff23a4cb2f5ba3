/* SPDX-License-Identifier: MIT */
/*
 * UDP impairments (issue 13), shared by both UDP echoes: udp.c (the
 * readiness engines) and uring_udp.c (io_uring). Each answer's fate (lost,
 * corrupted, duplicated, delayed) is drawn here from the socket's
 * generator, in one fixed order, so one seed and the same datagrams make
 * the same choices on every engine. Delayed answers are copied out of the
 * receive buffer (which goes back at once), held in a queue ordered by due
 * time (bounded: RB_LIMIT_IMPAIR_UDP_HELD per socket, counted in
 * `buffered`) and handed back to the model's own send by the socket's
 * timer. With jitter they may overtake each other, as on a network.
 */
#ifndef REBOUND_UDP_IMPAIR_H
#define REBOUND_UDP_IMPAIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "list.h"
#include "timer.h"

struct rb_worker;
struct rb_impair;
struct rb_impair_set;
struct rb_udp_imp;

/* A delayed answer, ready to send: msg's name and iovec point into it. */
struct rb_dgram {
	uint8_t kind;        /* first: the model's tag (uring_udp.c's CQE dispatch) */
	void *owner;         /* the model's, while the answer is out of the queue ... */
	struct rb_list link; /* ... (uring_udp.c: its socket, and its list of sends) */
	uint64_t due, seq;   /* sent in (due, seq) order; due in us */
	size_t len;
	struct msghdr msg;
	struct iovec iov;
	struct sockaddr_storage addr;
	unsigned char data[];
};

/*
 * The model's send for a due answer: 0 once it is sent or submitted (the
 * model then calls rb__udp_imp_done for it, at once or at its completion),
 * -EAGAIN if the socket is full (it stays first in the queue and is tried
 * again a millisecond later).
 */
typedef int rb_udp_imp_send_fn(struct rb_worker *w, struct rb_udp_imp *ui, struct rb_dgram *d);

/* One per UDP socket. */
struct rb_udp_imp {
	const struct rb_impair_set *seen; /* the set the generator was seeded for */
	uint64_t rng;
	rb_udp_imp_send_fn *send;
	struct rb_dgram **dq; /* a min-heap on (due, seq) */
	unsigned dq_n;
	unsigned held; /* in the queue, or handed to send and not yet done */
	uint64_t dq_seq;
	struct rb_timer timer;
	bool stopped; /* the timer is not armed any more */
};

void rb__udp_imp_init(struct rb_udp_imp *ui, rb_udp_imp_send_fn *send);
/* Drop what is queued (buffered goes down) and stop the timer. Answers
 * handed to send and not done yet stay the model's. */
void rb__udp_imp_fini(struct rb_worker *w, struct rb_udp_imp *ui);

/* The impairments in force for datagrams now, or NULL; a set not seen
 * before (published at run time) starts its own stream of choices, seeded
 * from --seed and the worker (not the port, which the kernel may choose). */
const struct rb_impair *rb__udp_imp_set(struct rb_worker *w, struct rb_udp_imp *ui);

/*
 * The fate of one answer (len bytes at data, to `to`), drawn at `now` (us):
 * lost (datagrams_lost), one bit flipped in place if `mine` (the bytes are
 * the answer's own, not chargen's shared stream; datagrams_corrupted),
 * sent twice (datagrams_duplicated), each copy perhaps delayed (copied to
 * the queue: datagrams_delayed; no room or memory: datagram_drops).
 * Returns how many copies are to be sent now: 0, 1 or 2.
 */
unsigned rb__udp_imp_answer(struct rb_worker *w, struct rb_udp_imp *ui, const struct rb_impair *c,
                            const void *to, socklen_t tolen, void *data, size_t len, bool mine,
                            uint64_t now);

/* A delayed answer handed to send is finished with (sent or not): freed. */
void rb__udp_imp_done(struct rb_worker *w, struct rb_udp_imp *ui, struct rb_dgram *d);

/* Send no more delayed answers: the timer is cancelled for good (what is
 * queued, and what is delayed from now on, stays until fini). */
void rb__udp_imp_stop(struct rb_worker *w, struct rb_udp_imp *ui);

#endif
