/* SPDX-License-Identifier: MIT */
/* Unit tests of the iovec pool and chains (engine/iopool.c). */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "iopool.h"

#define CS 64 /* tiny chunks make every boundary easy to reach */

static struct rb_pool pool;

static void setup(void)
{
	cr_assert_eq(rb_pool_init(&pool, CS, 4, 0), 0);
}

static void teardown(void)
{
	cr_assert_eq(pool.in_use, 0, "%zu bytes still held by chains", pool.in_use);
	rb_pool_fini(&pool);
	cr_assert_eq(pool.live, 0, "%lu chunks leaked", (unsigned long)pool.live);
}

TestSuite(iopool, .init = setup, .fini = teardown);

/* "Read" len bytes of pattern starting at value *next into the chain. */
static size_t append(struct rb_chain *ch, size_t len, unsigned char *next, int niov)
{
	struct iovec iov[16];
	int n = rb_chain_read_iov(&pool, ch, iov, niov, len);
	size_t done = 0;

	cr_assert_gt(n, 0);
	for (int i = 0; i < n && done < len; i++) {
		unsigned char *p = iov[i].iov_base;
		for (size_t j = 0; j < iov[i].iov_len && done < len; j++, done++)
			p[j] = (*next)++;
	}
	rb_chain_commit(&pool, ch, done);
	return done;
}

/* Check the chain holds bytes starting at value first, consume `take` of them. */
static void check_and_consume(struct rb_chain *ch, unsigned char *first, size_t take)
{
	struct iovec iov[64];
	int n = rb_chain_write_iov(&pool, ch, iov, 64);
	size_t seen = 0;
	unsigned char v = *first;

	for (int i = 0; i < n; i++) {
		const unsigned char *p = iov[i].iov_base;
		cr_assert_gt(iov[i].iov_len, 0, "empty iovec %d", i);
		for (size_t j = 0; j < iov[i].iov_len; j++, seen++)
			cr_assert_eq(p[j], v++, "byte %zu", seen);
	}
	cr_assert_eq(seen, ch->bytes);
	rb_chain_consume(&pool, ch, take);
	*first = (unsigned char)(*first + take);
}

Test(iopool, empty_chain_holds_nothing)
{
	struct rb_chain ch;
	struct iovec iov[4];

	rb_chain_init(&ch);
	cr_assert_eq(rb_chain_write_iov(&pool, &ch, iov, 4), 0);
	/* A read attempt that gets nothing (EAGAIN) gives its chunk back. */
	cr_assert_eq(rb_chain_read_iov(&pool, &ch, iov, 4, 1000), 4);
	cr_assert_eq(iov[0].iov_len + iov[1].iov_len + iov[2].iov_len + iov[3].iov_len, 4 * CS);
	rb_chain_commit(&pool, &ch, 0);
	cr_assert_null(ch.head);
	cr_assert_eq(ch.chunks, 0);
	cr_assert_eq(pool.in_use, 0);
}

Test(iopool, read_iov_respects_max_and_niov)
{
	struct rb_chain ch;
	struct iovec iov[8];

	rb_chain_init(&ch);
	cr_assert_eq(rb_chain_read_iov(&pool, &ch, iov, 8, 100), 2);
	cr_assert_eq(iov[0].iov_len, CS);
	cr_assert_eq(iov[1].iov_len, 100 - CS);
	rb_chain_commit(&pool, &ch, 10);
	/* The tail chunk has 54 bytes free; a second chunk would exceed niov 1. */
	cr_assert_eq(rb_chain_read_iov(&pool, &ch, iov, 1, 1000), 1);
	cr_assert_eq(iov[0].iov_len, CS - 10);
	rb_chain_commit(&pool, &ch, 0);
	cr_assert_eq(ch.chunks, 1);
	cr_assert_eq(ch.bytes, 10);
	rb_chain_release(&pool, &ch);
}

Test(iopool, append_and_consume_across_boundaries)
{
	struct rb_chain ch;
	unsigned char next = 0, first = 0;

	rb_chain_init(&ch);
	/* Appends of awkward sizes that straddle chunk ends, interleaved with
	 * consumes that stop mid-chunk and exactly on chunk ends. */
	static const size_t adds[] = {1, 63, 64, 65, 200, 3, 128, 127, 1};
	static const size_t takes[] = {0, 10, 54, 1, 300, 0, 64, 100, 0};
	for (size_t i = 0; i < sizeof(adds) / sizeof(adds[0]); i++) {
		size_t want = adds[i];
		while (want > 0)
			want -= append(&ch, want, &next, 16);
		size_t take = takes[i] < ch.bytes ? takes[i] : ch.bytes;
		check_and_consume(&ch, &first, take);
		cr_assert_eq(ch.chunks, ch.bytes == 0 ? 0 : (ch.head_off + ch.bytes + CS - 1) / CS,
		             "step %zu: %zu chunks for %zu bytes at offset %zu", i, ch.chunks,
		             ch.bytes, ch.head_off);
	}
	check_and_consume(&ch, &first, ch.bytes);
	cr_assert_null(ch.head, "a drained chain keeps no chunk");
	cr_assert_eq(next, first);
}

Test(iopool, partial_writes_advance)
{
	struct rb_chain ch;
	unsigned char next = 0, first = 0;

	rb_chain_init(&ch);
	while (ch.bytes < 1000)
		append(&ch, 1000 - ch.bytes, &next, 16);
	/* Short writes of 1, 7, 63, 64, 65 ... bytes, each checked. */
	for (size_t take = 1; ch.bytes > 0; take = take * 3 + 4)
		check_and_consume(&ch, &first, take < ch.bytes ? take : ch.bytes);
	cr_assert_eq(first, (unsigned char)1000);
}

Test(iopool, write_iov_bounded_by_niov)
{
	struct rb_chain ch;
	struct iovec iov[3];
	unsigned char next = 0;

	rb_chain_init(&ch);
	while (ch.bytes < 10 * CS)
		append(&ch, 10 * CS - ch.bytes, &next, 16);
	cr_assert_eq(rb_chain_write_iov(&pool, &ch, iov, 3), 3);
	cr_assert_eq(iov[0].iov_len + iov[1].iov_len + iov[2].iov_len, 3 * CS);
	rb_chain_release(&pool, &ch);
}

Test(iopool, chunks_are_reused_and_cache_is_bounded)
{
	struct rb_chain a, b;
	unsigned char next = 0;

	rb_chain_init(&a);
	rb_chain_init(&b);
	while (a.bytes < 8 * CS)
		append(&a, 8 * CS - a.bytes, &next, 16);
	cr_assert_eq(pool.allocated, 8);
	rb_chain_release(&pool, &a);
	/* The cache keeps at most 4 of the 8. */
	cr_assert_eq(pool.n_free, 4);
	cr_assert_eq(pool.live, 4);
	while (b.bytes < 4 * CS)
		append(&b, 4 * CS - b.bytes, &next, 16);
	cr_assert_eq(pool.allocated, 8, "cached chunks were not reused");
	rb_chain_release(&pool, &b);
}

Test(iopool, pool_limit_refuses_then_recovers)
{
	struct rb_pool lim;
	struct rb_chain ch;
	struct iovec iov[8];

	cr_assert_eq(rb_pool_init(&lim, CS, 4, 2 * CS), 0);
	rb_chain_init(&ch);
	/* Only two chunks fit under the limit. */
	cr_assert_eq(rb_chain_read_iov(&lim, &ch, iov, 8, 10 * CS), 2);
	rb_chain_commit(&lim, &ch, 2 * CS);
	cr_assert_eq(rb_chain_read_iov(&lim, &ch, iov, 8, 10), -ENOMEM);
	rb_chain_consume(&lim, &ch, CS);
	cr_assert_eq(rb_chain_read_iov(&lim, &ch, iov, 8, 10), 1);
	rb_chain_commit(&lim, &ch, 0);
	rb_chain_release(&lim, &ch);
	cr_assert_eq(lim.in_use, 0);
	rb_pool_fini(&lim);
	cr_assert_eq(lim.live, 0);
}

Test(iopool, bad_chunk_size)
{
	struct rb_pool p;

	cr_assert_eq(rb_pool_init(&p, 0, 4, 0), -EINVAL);
	cr_assert_eq(rb_pool_init(&p, 1u << 30, 4, 0), -EINVAL);
}
