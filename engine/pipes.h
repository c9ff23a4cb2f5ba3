/* SPDX-License-Identifier: MIT */
/*
 * Splice pipes and a cache of idle ones (haproxy's struct pipe with
 * get_pipe/put_pipe). Pipes know nothing of sessions or flows.
 */
#ifndef REBOUND_PIPES_H
#define REBOUND_PIPES_H

#include <stdbool.h>
#include <stddef.h>

struct rb_pipe {
	int rd, wr;   /* -1, -1: none */
	size_t cap;   /* what the kernel gave (F_GETPIPE_SZ) */
	size_t bytes; /* bytes in it, counted by the user: EAGAIN cannot tell */
};

/* Idle pipes kept per cache. */
#define RB_PIPE_CACHE 256

struct rb_pipe_cache {
	struct rb_pipe idle[RB_PIPE_CACHE];
	unsigned n;
	size_t size; /* pipe size asked for, after fs.pipe-max-size */
};

static inline void rb__pipe_init(struct rb_pipe *p)
{
	*p = (struct rb_pipe){.rd = -1, .wr = -1};
}

/* fs.pipe-max-size, or -1. */
int rb__pipe_max_size(void);
void rb__pipe_cache_init(struct rb_pipe_cache *pc, size_t size);
/* An empty pipe into p (which holds none): 1 from the cache, 0 new, or -errno. */
int rb__pipe_get(struct rb_pipe_cache *pc, struct rb_pipe *p);
/* Give p's pipe back: cached if empty (checked with FIONREAD if verify),
 * closed otherwise. p holds none afterwards. */
void rb__pipe_put(struct rb_pipe_cache *pc, struct rb_pipe *p, bool verify);
/* Close every cached pipe. */
void rb__pipe_cache_fini(struct rb_pipe_cache *pc);

#endif
