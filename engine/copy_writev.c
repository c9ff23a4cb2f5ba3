/* SPDX-License-Identifier: MIT */
/*
 * The writev copy strategy: readv straight into the flow's chunk chain,
 * sendmsg (writev with flags) straight from it. No payload is copied.
 */
#include <errno.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "copy.h"
#include "internal.h"

/* iovecs per readv: enough to fill a few chunks in one call. */
#define READ_IOV 4

static size_t writev_cap(const struct rb_worker *w, const struct rb_flow *f)
{
	(void)f;
	return w->srv->cfg.conn_buffer;
}

static ssize_t writev_read_into(struct rb_worker *w, struct rb_flow *f, int fd, size_t max,
                                bool *drained)
{
	struct iovec iov[READ_IOV];
	size_t want = 0;
	ssize_t r;
	int n, err;

	n = rb_chain_read_iov(&w->pool, &f->chain, iov, READ_IOV, max);
	if (n < 0)
		return -ENOBUFS;
	for (int i = 0; i < n; i++)
		want += iov[i].iov_len;
	r = readv(fd, iov, n);
	err = errno;
	RB_STAT_ADD(w, read_calls, 1);
	/* Commit after every attempt, so an idle flow keeps no chunk. */
	rb_chain_commit(&w->pool, &f->chain, r > 0 ? (size_t)r : 0);
	if (r > 0) {
		/* A short read on a stream socket means it is drained. */
		*drained = (size_t)r < want;
		return r;
	}
	return r == 0 ? 0 : -err;
}

/* Inlined into both flushes: with max = SIZE_MAX the trimming folds away. */
static inline ssize_t writev_send(struct rb_worker *w, struct rb_flow *f, int fd, size_t max,
                                  bool *full)
{
	int n = rb_chain_write_iov(&w->pool, &f->chain, w->iov, IOV_MAX);
	struct msghdr mh;
	size_t want = 0;
	ssize_t r;

	for (int i = 0; i < n; i++) {
		if (max != SIZE_MAX && want + w->iov[i].iov_len >= max) {
			w->iov[i].iov_len = max - want;
			want = max;
			n = i + 1;
			break;
		}
		want += w->iov[i].iov_len;
	}
	mh = (struct msghdr){.msg_iov = w->iov, .msg_iovlen = (size_t)n};
	/* MSG_NOSIGNAL: a peer that left costs an EPIPE, never a signal, even
	 * if the embedder kept SIGPIPE. */
	r = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
	RB_STAT_ADD(w, write_calls, 1);
	if (r < 0)
		return -errno;
	rb_chain_consume(&w->pool, &f->chain, (size_t)r);
	/* A short write means the send buffer is full: wait for writability. */
	*full = (size_t)r < want;
	return r;
}

static ssize_t writev_flush(struct rb_worker *w, struct rb_flow *f, int fd, bool *full)
{
	return writev_send(w, f, fd, SIZE_MAX, full);
}

static ssize_t writev_flush_upto(struct rb_worker *w, struct rb_flow *f, int fd, size_t max,
                                 bool *full)
{
	return writev_send(w, f, fd, max, full);
}

static void writev_idle(struct rb_worker *w, struct rb_flow *f)
{
	(void)w;
	(void)f;
}

static void writev_release(struct rb_worker *w, struct rb_flow *f)
{
	rb_chain_release(&w->pool, &f->chain);
}

const struct rb_copy_ops rb__copy_writev = {
        .name = "writev",
        .cap = writev_cap,
        .read_into = writev_read_into,
        .flush = writev_flush,
        .flush_upto = writev_flush_upto,
        .idle = writev_idle,
        .release = writev_release,
};
