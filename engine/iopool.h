/* SPDX-License-Identifier: MIT */
/*
 * iovec pool: fixed-size chunks on a per-worker free list, and chains of
 * chunks that hold one connection's pending bytes. Reads go straight into a
 * chain's free tail (rb_chain_read_iov + rb_chain_commit) and writes straight
 * from its head (rb_chain_write_iov + rb_chain_consume): no payload copy.
 *
 * Not thread-safe: a pool belongs to exactly one worker.
 */
#ifndef REBOUND_IOPOOL_H
#define REBOUND_IOPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

struct rb_chunk {
	struct rb_chunk *next;
	unsigned char data[];
};

struct rb_pool {
	size_t chunk_size;
	struct rb_chunk *free; /* cached idle chunks */
	unsigned n_free;
	unsigned max_free;  /* bound on the cache */
	size_t limit;       /* most chunk bytes in use at once, 0 = none */
	size_t reserve;     /* of the limit, kept for chains that hold no chunk */
	size_t in_use;      /* chunk bytes held by chains now */
	size_t freed;       /* bytes given back to malloc since the last trim */
	uint64_t puts;      /* chunks returned, ever: "memory may have come back" */
	uint64_t allocated; /* chunks obtained from malloc, ever */
	uint64_t live;      /* chunks that exist (in use + cached) */
};

/*
 * A chain: head is where unsent bytes start (head_off), tail is where the
 * next read lands (tail_off). An empty chain holds no chunk.
 */
struct rb_chain {
	struct rb_chunk *head;
	struct rb_chunk *tail;
	size_t head_off;
	size_t tail_off;
	size_t bytes;  /* unsent bytes */
	size_t chunks; /* chunks held */
};

/* Initialise a pool; limit 0 means unlimited. Returns 0 or -EINVAL. */
int rb_pool_init(struct rb_pool *p, size_t chunk_size, unsigned max_free, size_t limit);

/* Free every cached chunk. Chains must have been released first. */
void rb_pool_fini(struct rb_pool *p);

/*
 * Keep `bytes` of the limit (rounded down to whole chunks) for chains that
 * hold no chunk yet, so a new or idle connection can always read while
 * others hold the rest (issue 9). Must be below the limit.
 */
void rb_pool_set_reserve(struct rb_pool *p, size_t bytes);

/* Take a chunk (cache first, then malloc) for a chain that already holds
 * one; NULL if that would pass limit - reserve, or on OOM. */
struct rb_chunk *rb_pool_get(struct rb_pool *p);

/* Take the first chunk of an empty chain: may use the reserve. */
struct rb_chunk *rb_pool_get_first(struct rb_pool *p);

/* Could a chain holding `held` chunks get one more now? */
bool rb_pool_can_get(const struct rb_pool *p, size_t held);

/* Give freed memory back to the system (malloc_trim) if chunks were freed
 * since the last call; returns the bytes freed since then. */
size_t rb_pool_trim(struct rb_pool *p);

/* Return a chunk: cached if the cache has room, otherwise freed. */
void rb_pool_put(struct rb_pool *p, struct rb_chunk *c);

static inline void rb_chain_init(struct rb_chain *ch)
{
	*ch = (struct rb_chain){0};
}

/*
 * Describe up to max bytes of free tail space in at most niov iovecs,
 * taking chunks from the pool as needed. Returns the iovec count (>= 1), or
 * -ENOMEM if no chunk could be had and the tail has no room. max must be > 0.
 */
int rb_chain_read_iov(struct rb_pool *p, struct rb_chain *ch, struct iovec *iov, int niov,
                      size_t max);

/*
 * Account n bytes just read into the iovecs from rb_chain_read_iov and give
 * back chunks that stayed empty. Call it after every read attempt (n = 0 on
 * EAGAIN/EOF/error) so an idle connection keeps no chunk.
 */
void rb_chain_commit(struct rb_pool *p, struct rb_chain *ch, size_t n);

/* Describe up to niov iovecs of unsent bytes from the head. Returns the count. */
int rb_chain_write_iov(const struct rb_pool *p, const struct rb_chain *ch, struct iovec *iov,
                       int niov);

/* Drop n sent bytes from the head, returning emptied chunks to the pool. */
void rb_chain_consume(struct rb_pool *p, struct rb_chain *ch, size_t n);

/* Return every chunk of the chain to the pool, discarding its bytes. */
void rb_chain_release(struct rb_pool *p, struct rb_chain *ch);

#endif
