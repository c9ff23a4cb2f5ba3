/* SPDX-License-Identifier: MIT */
/*
 * The splice copy strategy: socket -> pipe -> socket, no copy through user
 * space. A flow takes a pipe from the worker's cache only while it has
 * bytes to move (an idle connection holds two descriptors fewer) and gives
 * it back once drained. If no pipe can be had (descriptors ran out), that
 * round goes through the chunk chain and writev instead; a pipe is taken
 * again only once the chain is empty, so bytes never overtake each other.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>

#include "copy.h"
#include "internal.h"

static size_t splice_cap(const struct rb_worker *w, const struct rb_flow *f)
{
	return f->pipe.rd >= 0 ? f->pipe.cap : w->srv->cfg.conn_buffer;
}

static void take_pipe(struct rb_worker *w, struct rb_flow *f)
{
	unsigned sup;
	int rc = rb__pipe_get(&w->pipes, &f->pipe);

	if (rc == 1)
		RB_STAT_ADD(w, pipe_cache_hits, 1);
	if (rc >= 0)
		return;
	RB_STAT_ADD(w, splice_fallbacks, 1);
	if (rb__ratelimit_ok(&w->rl_pipe, &sup))
		rb__log(RB_LOG_ERR, "no pipe for fd %d (%s): using writev (%u more suppressed)",
		        f->src->fd, strerror(-rc), sup);
}

static ssize_t splice_read_into(struct rb_worker *w, struct rb_flow *f, int fd, size_t max,
                                bool *drained)
{
	ssize_t r;

	if (f->pipe.rd < 0 && f->chain.bytes == 0)
		take_pipe(w, f);
	if (f->pipe.rd < 0)
		return rb__copy_writev.read_into(w, f, fd, max, drained);
	if (max > f->pipe.cap - f->pipe.bytes)
		max = f->pipe.cap - f->pipe.bytes;
	r = splice(fd, NULL, f->pipe.wr, NULL, max, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
	RB_STAT_ADD(w, read_calls, 1);
	RB_STAT_ADD(w, splice_calls, 1);
	if (r > 0) {
		/* No short-read shortcut: a short splice may mean the pipe ran out
		 * of slots, not that the socket is empty. */
		*drained = false;
		f->pipe.bytes += (size_t)r;
		return r;
	}
	if (r == 0)
		return 0;
	if (errno == EAGAIN) {
		int queued = 0;

		/*
		 * With bytes in the pipe, ambiguous: the socket is empty, or the
		 * pipe is out of page slots before bytes. The socket's queue
		 * tells: an empty one waits for its next edge like any read.
		 * (Taking it for a full pipe stopped reading until a flush,
		 * which never comes while the sink is still connecting.) Bytes
		 * that arrive after the ioctl raise a new edge.
		 */
		if (f->pipe.bytes == 0 || (ioctl(fd, FIONREAD, &queued) == 0 && queued == 0))
			return -EAGAIN;
		return -EBUSY;
	}
	return -errno;
}

static inline ssize_t splice_send(struct rb_worker *w, struct rb_flow *f, int fd, size_t max,
                                  bool *full)
{
	size_t len = f->pipe.bytes < max ? f->pipe.bytes : max;
	ssize_t r;

	if (f->chain.bytes > 0)
		return max == SIZE_MAX ? rb__copy_writev.flush(w, f, fd, full)
		                       : rb__copy_writev.flush_upto(w, f, fd, max, full);
	r = splice(f->pipe.rd, NULL, fd, NULL, len, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
	RB_STAT_ADD(w, write_calls, 1);
	RB_STAT_ADD(w, splice_calls, 1);
	if (r > 0) {
		f->pipe.bytes -= (size_t)r;
		RB_STAT_ADD(w, bytes_spliced, (uint64_t)r);
		*full = false;
		return r;
	}
	/* 0 from a pipe we believe holds bytes: give up on it. */
	return r == 0 ? -EIO : -errno;
}

static ssize_t splice_flush(struct rb_worker *w, struct rb_flow *f, int fd, bool *full)
{
	return splice_send(w, f, fd, SIZE_MAX, full);
}

static ssize_t splice_flush_upto(struct rb_worker *w, struct rb_flow *f, int fd, size_t max,
                                 bool *full)
{
	return splice_send(w, f, fd, max, full);
}

static void splice_idle(struct rb_worker *w, struct rb_flow *f)
{
	if (f->pipe.rd >= 0 && f->pipe.bytes == 0)
		rb__pipe_put(&w->pipes, &f->pipe, false);
}

static void splice_release(struct rb_worker *w, struct rb_flow *f)
{
	rb_chain_release(&w->pool, &f->chain);
	rb__pipe_put(&w->pipes, &f->pipe, true);
}

const struct rb_copy_ops rb__copy_splice = {
        .name = "splice",
        .cap = splice_cap,
        .read_into = splice_read_into,
        .flush = splice_flush,
        .flush_upto = splice_flush_upto,
        .idle = splice_idle,
        .release = splice_release,
};
