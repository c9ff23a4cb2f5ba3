/* SPDX-License-Identifier: MIT */
/*
 * --service sockperf: what sockperf's own server does for its client. A
 * message starts with a 14-byte header, big-endian: sequence number (u64),
 * flags (u16: 1 from the client, 2 a pong is requested, 4 warm-up) and the
 * message's whole length, header included (u32). Only messages that ask for
 * a pong are answered, with the client flag cleared; the others are read and
 * dropped. Over TCP the stream is framed by the length field.
 *
 * The TCP strategy reads into a staging buffer, frames it, and queues the
 * answers in the flow's chunk chain, so sending is the writev strategy's.
 * The completion model stages what its receives bring and frames it with
 * the same rb__sockperf_frame (proactor_uring.c).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "copy.h"
#include "internal.h"

#define HDR         14u
#define FLAG_CLIENT 1u
#define FLAG_PONG   2u
#define MAX_MSG     RB_SOCKPERF_MAX_MSG
_Static_assert(RB_SOCKPERF_MAX_MSG >= 65536u + HDR, "a whole message fits the stage");

static uint32_t be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

bool rb__sockperf_answer(void *msg, size_t len)
{
	unsigned char *p = msg;
	unsigned flags;

	if (len < HDR)
		return false;
	flags = (unsigned)p[8] << 8 | p[9];
	if (!(flags & FLAG_PONG))
		return false;
	flags &= ~FLAG_CLIENT;
	p[8] = (unsigned char)(flags >> 8);
	p[9] = (unsigned char)flags;
	return true;
}

static size_t sockperf_cap(const struct rb_worker *w, const struct rb_flow *f)
{
	return rb__copy_writev.cap(w, f);
}

/* Could n more bytes go into the chain now, all of them? (An answer is
 * queued whole or not at all, so a retry never repeats part of one.) */
static bool chain_has_room(const struct rb_worker *w, const struct rb_flow *f, size_t n)
{
	const struct rb_pool *p = &w->pool;
	size_t cs = p->chunk_size, tail = 0, chunks, limit;

	if (f->chain.chunks && f->chain.tail_off < cs)
		tail = cs - f->chain.tail_off;
	if (n <= tail || !p->limit)
		return true;
	chunks = (n - tail + cs - 1) / cs;
	limit = f->chain.chunks ? p->limit - p->reserve : p->limit;
	return p->in_use + chunks * cs <= limit;
}

/* Append n bytes to the chain (the answers); false if memory ran out. */
static bool chain_append(struct rb_worker *w, struct rb_flow *f, const unsigned char *p, size_t n)
{
	while (n > 0) {
		struct iovec iov[4];
		size_t done = 0;
		int k = rb_chain_read_iov(&w->pool, &f->chain, iov, 4, n);
		if (k < 0)
			return false;
		for (int i = 0; i < k && done < n; i++) {
			size_t c = iov[i].iov_len < n - done ? iov[i].iov_len : n - done;
			memcpy(iov[i].iov_base, p + done, c);
			done += c;
		}
		rb_chain_commit(&w->pool, &f->chain, done);
		p += done;
		n -= done;
	}
	return true;
}

int rb__sockperf_frame(struct rb_worker *w, struct rb_flow *f)
{
	size_t off = 0;
	int rc = 0;

	while (f->stage_len - off >= HDR) {
		unsigned char *m = f->stage + off;
		uint32_t len = be32(m + 10);
		if (len < HDR || len > MAX_MSG)
			return -EPROTO;
		if (f->stage_len - off < len)
			break;
		if ((m[9] & FLAG_PONG) && !chain_has_room(w, f, len)) {
			rc = -ENOBUFS; /* answered from here once chunks come back */
			break;
		}
		if (rb__sockperf_answer(m, len) && !chain_append(w, f, m, len))
			return -ENOMEM; /* malloc failed with the cap allowing it */
		off += len;
	}
	memmove(f->stage, f->stage + off, f->stage_len - off);
	f->stage_len -= off;
	return rc;
}

static ssize_t sockperf_read_into(struct rb_worker *w, struct rb_flow *f, int fd, size_t max,
                                  bool *drained)
{
	size_t room;
	ssize_t r;
	int rc;

	if (!f->stage && !(f->stage = malloc(MAX_MSG)))
		return -ENOBUFS;
	/* Messages left staged when memory ran out go first. */
	if ((rc = rb__sockperf_frame(w, f)) < 0)
		return rc;
	room = MAX_MSG - f->stage_len;
	if (max > room)
		max = room;
	r = read(fd, f->stage + f->stage_len, max);
	RB_STAT_ADD(w, read_calls, 1);
	if (r <= 0)
		return r == 0 ? 0 : -errno;
	f->stage_len += (size_t)r;
	rc = rb__sockperf_frame(w, f);
	if (rc == -EPROTO)
		return rc;
	/* Out of chunks: the socket is not known to be drained, so the next
	 * round comes back here, answers what is staged, or waits for memory. */
	*drained = rc == 0 && (size_t)r < max;
	return r;
}

static ssize_t sockperf_flush(struct rb_worker *w, struct rb_flow *f, int fd, bool *full)
{
	return rb__copy_writev.flush(w, f, fd, full);
}

static ssize_t sockperf_flush_upto(struct rb_worker *w, struct rb_flow *f, int fd, size_t max,
                                   bool *full)
{
	return rb__copy_writev.flush_upto(w, f, fd, max, full);
}

static void sockperf_release(struct rb_worker *w, struct rb_flow *f)
{
	rb__copy_writev.release(w, f);
	free(f->stage);
	f->stage = NULL;
	f->stage_len = 0;
}

static void sockperf_idle(struct rb_worker *w, struct rb_flow *f)
{
	(void)w;
	/* An idle connection keeps no staging buffer. */
	if (f->stage && f->stage_len == 0) {
		free(f->stage);
		f->stage = NULL;
	}
}

const struct rb_copy_ops rb__copy_sockperf = {
        .name = "sockperf",
        .cap = sockperf_cap,
        .read_into = sockperf_read_into,
        .flush = sockperf_flush,
        .flush_upto = sockperf_flush_upto,
        .idle = sockperf_idle,
        .release = sockperf_release,
};
