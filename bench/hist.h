/* SPDX-License-Identifier: MIT */
/*
 * Log-linear latency histogram: 2048 linear sub-buckets per power of two,
 * so every recorded value keeps about 3 significant digits (relative error
 * below 0.1%). Values are nanoseconds from 0 to RBB_HIST_MAX (60 s); values
 * below 2048 ns are kept exactly, larger ones are clamped to the maximum and
 * counted as saturated.
 */
#ifndef RBB_HIST_H
#define RBB_HIST_H

#include <stdint.h>
#include <stdio.h>

#define RBB_HIST_SUB_BITS 11
#define RBB_HIST_MAX      60000000000ULL /* 60 s in ns */

struct rbb_hist {
	uint64_t *counts;
	unsigned n_counts;
	uint64_t total;
	uint64_t min;
	uint64_t max;
	uint64_t saturated; /* values clamped to RBB_HIST_MAX */
	double sum;
	double sum_sq;
};

/* Allocates an empty histogram into *out. Returns 0 or -ENOMEM. */
int rbb_hist_create(struct rbb_hist **out);
/* Frees a histogram; NULL is a no-op. */
void rbb_hist_destroy(struct rbb_hist *h);
/* Forgets every recorded value. */
void rbb_hist_reset(struct rbb_hist *h);
/* Records @count occurrences of @value (ns). */
void rbb_hist_record_n(struct rbb_hist *h, uint64_t value, uint64_t count);
/* Records one occurrence of @value (ns). */
void rbb_hist_record(struct rbb_hist *h, uint64_t value);
/* Adds every value of @src to @dst. */
void rbb_hist_merge(struct rbb_hist *dst, const struct rbb_hist *src);
/*
 * Value at percentile @p (0..100): the highest value equivalent to the
 * bucket that holds the ceil(p% * total)-th smallest value, clamped to
 * [min, max]. Returns 0 for an empty histogram.
 */
uint64_t rbb_hist_percentile(const struct rbb_hist *h, double p);
/* Mean and standard deviation of the recorded values, 0 when empty. */
double rbb_hist_mean(const struct rbb_hist *h);
double rbb_hist_stddev(const struct rbb_hist *h);
/* Lowest and highest value that share @value's bucket. */
uint64_t rbb_hist_lowest_equiv(uint64_t value);
uint64_t rbb_hist_highest_equiv(uint64_t value);
/*
 * Writes HdrHistogram's percentile-distribution text ("hgrm") to @f, values
 * divided by @unit_ns (1000 gives microseconds), @ticks_per_half lines per
 * halving of the distance to 100%. Returns 0 or -EIO.
 */
int rbb_hist_write_hgrm(const struct rbb_hist *h, FILE *f, double unit_ns, unsigned ticks_per_half);

#endif
