/* SPDX-License-Identifier: MIT */
/*
 * Copy strategies: how a flow's bytes get from its source to its sink,
 * chosen once per flow (nginx's ngx_os_io_t recv_chain/send_chain). The
 * flow's state machine (reactor.c) is the same for all of them.
 */
#ifndef REBOUND_COPY_H
#define REBOUND_COPY_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct rb_worker;
struct rb_flow;

struct rb_copy_ops {
	const char *name;
	/* Bytes the flow may hold before it pauses. */
	size_t (*cap)(const struct rb_worker *w, const struct rb_flow *f);
	/*
	 * Move at most max (> 0) bytes from fd into the flow. Returns the bytes
	 * moved (> 0; *drained if fd is known to be empty now), 0 at the end of
	 * input, or -EAGAIN (nothing to read), -ENOBUFS (no memory now: wait for
	 * chunks to come back), -EBUSY (cannot tell an empty socket from a full
	 * buffer: wait for a flush), -EINTR, or another -errno (fd failed).
	 */
	ssize_t (*read_into)(struct rb_worker *w, struct rb_flow *f, int fd, size_t max,
	                     bool *drained);
	/* Send buffered bytes to fd. Returns the bytes sent (> 0; *full if fd
	 * took less than was offered), or -EAGAIN, -EINTR, another -errno. */
	ssize_t (*flush)(struct rb_worker *w, struct rb_flow *f, int fd, bool *full);
	/* The same, at most max (> 0) bytes: for impaired flows (impair.h),
	 * so the plain flush keeps its cost. */
	ssize_t (*flush_upto)(struct rb_worker *w, struct rb_flow *f, int fd, size_t max,
	                      bool *full);
	/* The flow holds no bytes: give back what it needs only while busy. */
	void (*idle)(struct rb_worker *w, struct rb_flow *f);
	/* The flow ends: free its buffers, dropping any bytes. */
	void (*release)(struct rb_worker *w, struct rb_flow *f);
};

/* readv into chunk chains, sendmsg (writev) from them: the default. */
extern const struct rb_copy_ops rb__copy_writev;
/* splice through a pipe, falling back to writev while no pipe can be had. */
extern const struct rb_copy_ops rb__copy_splice;
/* --service sockperf: frames the stream, queues answers to pong requests. */
extern const struct rb_copy_ops rb__copy_sockperf;
/* May a sockperf message be answered? If so, it is made the answer (its
 * client flag cleared). */
bool rb__sockperf_answer(void *msg, size_t len);
/* sockperf's largest message (65507 bytes of UDP payload, and its header):
 * a flow's staging buffer (f->stage) holds this many bytes. */
#define RB_SOCKPERF_MAX_MSG (65536u + 14u)
/* Answer (queue in f->chain) or drop every whole message staged in f->stage,
 * keeping the rest staged: 0, -ENOBUFS if the answers' chunks ran out (the
 * unanswered messages stay staged), -EPROTO on an impossible length, or
 * -ENOMEM. */
int rb__sockperf_frame(struct rb_worker *w, struct rb_flow *f);

#endif
