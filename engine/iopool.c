/* SPDX-License-Identifier: MIT */
#include "iopool.h"
#include "rb_limits.h"

#include <errno.h>
#include <malloc.h>
#include <stdlib.h>

int rb_pool_init(struct rb_pool *p, size_t chunk_size, unsigned max_free, size_t limit)
{
	if (chunk_size < RB_POOL_CHUNK_MIN || chunk_size > RB_POOL_CHUNK_MAX)
		return -EINVAL;
	*p = (struct rb_pool){
	        .chunk_size = chunk_size,
	        .max_free = max_free,
	        .limit = limit,
	};
	return 0;
}

void rb_pool_fini(struct rb_pool *p)
{
	while (p->free) {
		struct rb_chunk *c = p->free;
		p->free = c->next;
		free(c);
		p->live--;
	}
	p->n_free = 0;
}

void rb_pool_set_reserve(struct rb_pool *p, size_t bytes)
{
	bytes -= bytes % p->chunk_size;
	p->reserve = p->limit && bytes < p->limit ? bytes : 0;
}

bool rb_pool_can_get(const struct rb_pool *p, size_t held)
{
	size_t limit = held ? p->limit - p->reserve : p->limit;

	return !p->limit || p->in_use + p->chunk_size <= limit;
}

static struct rb_chunk *pool_take(struct rb_pool *p)
{
	struct rb_chunk *c;

	if (p->free) {
		c = p->free;
		p->free = c->next;
		p->n_free--;
	} else {
		c = malloc(sizeof(*c) + p->chunk_size);
		if (!c)
			return NULL;
		p->allocated++;
		p->live++;
	}
	c->next = NULL;
	p->in_use += p->chunk_size;
	return c;
}

struct rb_chunk *rb_pool_get(struct rb_pool *p)
{
	return rb_pool_can_get(p, 1) ? pool_take(p) : NULL;
}

struct rb_chunk *rb_pool_get_first(struct rb_pool *p)
{
	return rb_pool_can_get(p, 0) ? pool_take(p) : NULL;
}

size_t rb_pool_trim(struct rb_pool *p)
{
	size_t freed = p->freed;

	if (freed) {
		/* Chunks are below glibc's mmap threshold: free() keeps them in
		 * the heap, and only a trim returns the pages (madvise). */
#ifdef __GLIBC__
		malloc_trim(0);
#endif
		p->freed = 0;
	}
	return freed;
}

void rb_pool_put(struct rb_pool *p, struct rb_chunk *c)
{
	p->in_use -= p->chunk_size;
	p->puts++;
	if (p->n_free < p->max_free) {
		c->next = p->free;
		p->free = c;
		p->n_free++;
	} else {
		free(c);
		p->live--;
		p->freed += p->chunk_size;
	}
}

void rb_chain_release(struct rb_pool *p, struct rb_chain *ch)
{
	struct rb_chunk *c = ch->head;

	while (c) {
		struct rb_chunk *next = c->next;
		rb_pool_put(p, c);
		c = next;
	}
	rb_chain_init(ch);
}

/* Free the spare chunks linked after the tail by rb_chain_read_iov. */
static void chain_trim(struct rb_pool *p, struct rb_chain *ch)
{
	struct rb_chunk *c = ch->tail->next;

	ch->tail->next = NULL;
	while (c) {
		struct rb_chunk *next = c->next;
		rb_pool_put(p, c);
		ch->chunks--;
		c = next;
	}
}

int rb_chain_read_iov(struct rb_pool *p, struct rb_chain *ch, struct iovec *iov, int niov,
                      size_t max)
{
	size_t cs = p->chunk_size;
	struct rb_chunk *last;
	int n = 0;

	if (!ch->tail) {
		struct rb_chunk *c = rb_pool_get_first(p);
		if (!c)
			return -ENOMEM;
		ch->head = ch->tail = c;
		ch->head_off = ch->tail_off = 0;
		ch->chunks = 1;
	}
	if (ch->tail_off < cs) {
		size_t room = cs - ch->tail_off;
		if (room > max)
			room = max;
		iov[n].iov_base = ch->tail->data + ch->tail_off;
		iov[n].iov_len = room;
		max -= room;
		n++;
	}
	last = ch->tail;
	while (max > 0 && n < niov) {
		struct rb_chunk *c = rb_pool_get(p);
		size_t room = cs < max ? cs : max;
		if (!c)
			break;
		last->next = c;
		last = c;
		ch->chunks++;
		iov[n].iov_base = c->data;
		iov[n].iov_len = room;
		max -= room;
		n++;
	}
	return n > 0 ? n : -ENOMEM;
}

void rb_chain_commit(struct rb_pool *p, struct rb_chain *ch, size_t n)
{
	size_t cs = p->chunk_size;

	if (!ch->tail)
		return;
	ch->bytes += n;
	while (n > 0) {
		size_t take;
		if (ch->tail_off == cs) {
			ch->tail = ch->tail->next;
			ch->tail_off = 0;
		}
		take = cs - ch->tail_off;
		if (take > n)
			take = n;
		ch->tail_off += take;
		n -= take;
	}
	chain_trim(p, ch);
	if (ch->bytes == 0)
		rb_chain_release(p, ch);
}

int rb_chain_write_iov(const struct rb_pool *p, const struct rb_chain *ch, struct iovec *iov,
                       int niov)
{
	const struct rb_chunk *c = ch->head;
	size_t off = ch->head_off;
	int n = 0;

	if (ch->bytes == 0)
		return 0;
	/* Every chunk before the tail is full up to chunk_size. */
	while (c && n < niov) {
		size_t end = c == ch->tail ? ch->tail_off : p->chunk_size;
		if (end > off) {
			iov[n].iov_base = (void *)(c->data + off);
			iov[n].iov_len = end - off;
			n++;
		}
		if (c == ch->tail)
			break;
		c = c->next;
		off = 0;
	}
	return n;
}

void rb_chain_consume(struct rb_pool *p, struct rb_chain *ch, size_t n)
{
	while (n > 0 && ch->head) {
		size_t end = ch->head == ch->tail ? ch->tail_off : p->chunk_size;
		size_t take = end - ch->head_off;
		if (take > n)
			take = n;
		ch->head_off += take;
		ch->bytes -= take;
		n -= take;
		if (ch->head_off == end && ch->head != ch->tail) {
			struct rb_chunk *c = ch->head;
			ch->head = c->next;
			ch->head_off = 0;
			ch->chunks--;
			rb_pool_put(p, c);
		}
	}
	if (ch->bytes == 0 && ch->head)
		rb_chain_release(p, ch);
}
