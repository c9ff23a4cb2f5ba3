// SPDX-License-Identifier: MIT
/* The stream generator and verifier: every kind of damage is found at its exact offset. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "stream.h"

#define LEN 10000

static uint8_t ref[LEN + 16];

static void fill_ref(uint64_t seed)
{
	for (size_t i = 0; i < sizeof(ref); i++)
		ref[i] = rbb_stream_byte(seed, i);
}

/* The first offset where @got differs from the stream, found the slow way. */
static uint64_t first_diff(uint64_t seed, const uint8_t *got, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (got[i] != rbb_stream_byte(seed, i))
			return i;
	return len;
}

/* Feeds @got in uneven pieces, as recv would; returns feed's result. */
static int feed_all(struct rbb_verifier *v, const uint8_t *got, size_t len)
{
	size_t off = 0, piece = 1;

	v->sent = LEN;
	while (off < len) {
		size_t n = len - off < piece ? len - off : piece;
		int rc = rbb_verifier_feed(v, got + off, n);

		if (rc < 0)
			return rc;
		off += n;
		piece = piece * 3 + 1;
	}
	return 0;
}

Test(stream, fill_matches_bytes_at_any_offset_and_length)
{
	uint64_t seed = rbb_stream_seed(42, 3);
	uint8_t buf[300];

	fill_ref(seed);
	for (uint64_t off = 0; off < 40; off++)
		for (size_t len = 0; len < 100; len += 7) {
			memset(buf, 0xee, sizeof(buf));
			rbb_stream_fill(seed, off, buf, len);
			cr_assert_eq(memcmp(buf, ref + off, len), 0, "off %llu len %zu",
			             (unsigned long long)off, len);
			cr_assert_eq(buf[len], 0xee, "wrote past the end");
			cr_assert_eq(rbb_stream_check(seed, off, buf, len), len);
		}
}

Test(stream, streams_differ_per_connection_and_run)
{
	uint8_t a[64], b[64], c[64];

	rbb_stream_fill(rbb_stream_seed(1, 0), 0, a, sizeof(a));
	rbb_stream_fill(rbb_stream_seed(1, 1), 0, b, sizeof(b));
	rbb_stream_fill(rbb_stream_seed(2, 0), 0, c, sizeof(c));
	cr_assert_neq(memcmp(a, b, sizeof(a)), 0);
	cr_assert_neq(memcmp(a, c, sizeof(a)), 0);
}

Test(stream, intact_stream_passes)
{
	struct rbb_verifier v;
	uint64_t seed = rbb_stream_seed(1, 0);

	fill_ref(seed);
	rbb_verifier_init(&v, seed);
	cr_assert_eq(feed_all(&v, ref, LEN), 0);
	cr_assert_eq(v.off, LEN);
}

Test(stream, flipped_byte)
{
	const uint64_t seed = rbb_stream_seed(9, 1);
	const size_t at[] = {0, 1, 7, 8, 4095, 9999};

	fill_ref(seed);
	for (unsigned k = 0; k < sizeof(at) / sizeof(at[0]); k++) {
		struct rbb_verifier v;
		uint8_t got[LEN];

		memcpy(got, ref, LEN);
		got[at[k]] ^= 0x10;
		rbb_verifier_init(&v, seed);
		cr_assert_eq(feed_all(&v, got, LEN), -EBADMSG);
		cr_assert_eq(v.bad_off, at[k]);
		cr_assert_eq(v.expected, ref[at[k]]);
		cr_assert_eq(v.got, ref[at[k]] ^ 0x10);
		/* The position stays before the chunk that failed. */
		cr_assert_leq(v.off, at[k]);
	}
}

Test(stream, dropped_byte)
{
	const uint64_t seed = rbb_stream_seed(5, 2);
	uint8_t got[LEN];
	struct rbb_verifier v;
	size_t k = 1000;

	fill_ref(seed);
	/* Pick a byte that differs from its successor, so the drop shows at k itself. */
	while (ref[k] == ref[k + 1])
		k++;
	memcpy(got, ref, k);
	memcpy(got + k, ref + k + 1, LEN - k - 1);
	rbb_verifier_init(&v, seed);
	cr_assert_eq(feed_all(&v, got, LEN - 1), -EBADMSG);
	cr_assert_eq(v.bad_off, k);
	cr_assert_eq(v.bad_off, first_diff(seed, got, LEN - 1));
	cr_assert_eq(v.got, ref[k + 1]);
}

Test(stream, duplicated_byte)
{
	const uint64_t seed = rbb_stream_seed(5, 3);
	uint8_t got[LEN + 1];
	struct rbb_verifier v;
	size_t k = 2000;

	fill_ref(seed);
	while (ref[k] == ref[k + 1])
		k++;
	memcpy(got, ref, k + 1);
	got[k + 1] = ref[k];
	memcpy(got + k + 2, ref + k + 1, LEN - k - 1);
	rbb_verifier_init(&v, seed);
	cr_assert_eq(feed_all(&v, got, LEN), -EBADMSG);
	cr_assert_eq(v.bad_off, k + 1);
	cr_assert_eq(v.bad_off, first_diff(seed, got, LEN));
}

Test(stream, reordered_bytes)
{
	const uint64_t seed = rbb_stream_seed(5, 4);
	uint8_t got[LEN], t;
	struct rbb_verifier v;
	size_t k = 3001;

	fill_ref(seed);
	while (ref[k] == ref[k + 1])
		k++;
	memcpy(got, ref, LEN);
	t = got[k];
	got[k] = got[k + 1];
	got[k + 1] = t;
	rbb_verifier_init(&v, seed);
	cr_assert_eq(feed_all(&v, got, LEN), -EBADMSG);
	cr_assert_eq(v.bad_off, k);
}

Test(stream, reordered_chunks)
{
	/* Two 512-byte halves of a message arriving swapped. */
	const uint64_t seed = rbb_stream_seed(11, 0);
	uint8_t got[1024];
	struct rbb_verifier v;

	fill_ref(seed);
	memcpy(got, ref + 512, 512);
	memcpy(got + 512, ref, 512);
	rbb_verifier_init(&v, seed);
	cr_assert_eq(feed_all(&v, got, sizeof(got)), -EBADMSG);
	cr_assert_eq(v.bad_off, first_diff(seed, got, sizeof(got)));
}

Test(stream, more_bytes_than_sent)
{
	const uint64_t seed = rbb_stream_seed(1, 1);
	struct rbb_verifier v;

	fill_ref(seed);
	rbb_verifier_init(&v, seed);
	v.sent = 100;
	cr_assert_eq(rbb_verifier_feed(&v, ref, 60), 0);
	cr_assert_eq(rbb_verifier_feed(&v, ref + 60, 50), -EOVERFLOW);
	cr_assert_eq(v.bad_off, 100);
	cr_assert_eq(v.off, 60);
}

Test(stream, windows_are_the_stream_in_place_across_the_wrap)
{
	uint64_t seed = rbb_stream_seed(9, 1);
	uint64_t wrap = RBB_STREAM_PERIOD - seed % RBB_STREAM_PERIOD; /* offset of the wrap */
	static uint8_t buf[RBB_STREAM_WINDOW + 1];

	for (uint64_t off = wrap - 70000; off < wrap + 70000; off += 9973) {
		const uint8_t *win = rbb_stream_window(seed, off, RBB_STREAM_WINDOW);

		cr_assert_not_null(win);
		for (size_t i = 0; i < RBB_STREAM_WINDOW; i += 4099)
			cr_assert_eq(win[i], rbb_stream_byte(seed, off + i), "off %llu + %zu",
			             (unsigned long long)off, i);
		cr_assert_eq(rbb_stream_check(seed, off, win, RBB_STREAM_WINDOW),
		             RBB_STREAM_WINDOW);
	}
	cr_assert_null(rbb_stream_window(seed, 0, RBB_STREAM_WINDOW + 1));
	/* Longer than a window: fill and check work in pieces. */
	rbb_stream_fill(seed, wrap - 5, buf, sizeof(buf));
	cr_assert_eq(rbb_stream_check(seed, wrap - 5, buf, sizeof(buf)), sizeof(buf));
	buf[RBB_STREAM_WINDOW] ^= 1;
	cr_assert_eq(rbb_stream_check(seed, wrap - 5, buf, sizeof(buf)), RBB_STREAM_WINDOW);
	/* The period is where a stream repeats, and nowhere sooner for a window's length. */
	cr_assert_eq(rbb_stream_byte(seed, 12345),
	             rbb_stream_byte(seed, 12345 + RBB_STREAM_PERIOD));
	cr_assert_neq(rbb_stream_check(seed, 0, rbb_stream_window(seed, 1u << 19, 4096), 4096),
	              4096);
}
