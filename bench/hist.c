// SPDX-License-Identifier: MIT
#include "hist.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SUB      (1u << RBB_HIST_SUB_BITS)
#define HALF     (SUB / 2)
#define HALF_BIT (RBB_HIST_SUB_BITS - 1)

/*
 * Index layout: values below SUB map to themselves (exact); a larger value
 * with its top bit at position m is shifted right by e = m - HALF_BIT, which
 * leaves HALF..SUB-1, and lands in the e-th block of HALF slots after the
 * exact range. Bucket width is 2^e, at most 1/HALF of the value.
 */
static unsigned shift_of(uint64_t v)
{
	if (v < SUB)
		return 0;
	return (unsigned)(63 - __builtin_clzll(v)) - HALF_BIT;
}

static unsigned index_of(uint64_t v)
{
	unsigned e = shift_of(v);

	if (e == 0)
		return (unsigned)v;
	return SUB + (e - 1) * HALF + (unsigned)((v >> e) - HALF);
}

static uint64_t lowest_of_index(unsigned i)
{
	unsigned e;

	if (i < SUB)
		return i;
	e = (i - SUB) / HALF + 1;
	return ((uint64_t)(HALF + (i - SUB) % HALF)) << e;
}

static uint64_t width_of_index(unsigned i)
{
	if (i < SUB)
		return 1;
	return 1ULL << ((i - SUB) / HALF + 1);
}

uint64_t rbb_hist_lowest_equiv(uint64_t value)
{
	return lowest_of_index(index_of(value));
}

uint64_t rbb_hist_highest_equiv(uint64_t value)
{
	unsigned i = index_of(value);

	return lowest_of_index(i) + width_of_index(i) - 1;
}

int rbb_hist_create(struct rbb_hist **out)
{
	struct rbb_hist *h = calloc(1, sizeof(*h));

	if (!h)
		return -ENOMEM;
	h->n_counts = index_of(RBB_HIST_MAX) + 1;
	h->counts = calloc(h->n_counts, sizeof(*h->counts));
	if (!h->counts) {
		free(h);
		return -ENOMEM;
	}
	rbb_hist_reset(h);
	*out = h;
	return 0;
}

void rbb_hist_destroy(struct rbb_hist *h)
{
	if (!h)
		return;
	free(h->counts);
	free(h);
}

void rbb_hist_reset(struct rbb_hist *h)
{
	memset(h->counts, 0, h->n_counts * sizeof(*h->counts));
	h->total = 0;
	h->min = UINT64_MAX;
	h->max = 0;
	h->saturated = 0;
	h->sum = 0;
	h->sum_sq = 0;
}

void rbb_hist_record_n(struct rbb_hist *h, uint64_t value, uint64_t count)
{
	if (!count)
		return;
	if (value > RBB_HIST_MAX) {
		value = RBB_HIST_MAX;
		h->saturated += count;
	}
	h->counts[index_of(value)] += count;
	h->total += count;
	if (value < h->min)
		h->min = value;
	if (value > h->max)
		h->max = value;
	h->sum += (double)value * (double)count;
	h->sum_sq += (double)value * (double)value * (double)count;
}

void rbb_hist_record(struct rbb_hist *h, uint64_t value)
{
	rbb_hist_record_n(h, value, 1);
}

void rbb_hist_merge(struct rbb_hist *dst, const struct rbb_hist *src)
{
	for (unsigned i = 0; i < src->n_counts; i++)
		dst->counts[i] += src->counts[i];
	dst->total += src->total;
	dst->saturated += src->saturated;
	if (src->min < dst->min)
		dst->min = src->min;
	if (src->max > dst->max)
		dst->max = src->max;
	dst->sum += src->sum;
	dst->sum_sq += src->sum_sq;
}

static uint64_t clamp_value(const struct rbb_hist *h, uint64_t v)
{
	if (v < h->min)
		return h->min;
	if (v > h->max)
		return h->max;
	return v;
}

/* Index of the bucket holding the @rank-th smallest value (1-based). */
static unsigned index_of_rank(const struct rbb_hist *h, uint64_t rank, uint64_t *cum_out)
{
	uint64_t cum = 0;
	unsigned i;

	for (i = 0; i < h->n_counts; i++) {
		cum += h->counts[i];
		if (cum >= rank)
			break;
	}
	if (i == h->n_counts)
		i--;
	if (cum_out)
		*cum_out = cum;
	return i;
}

static uint64_t rank_of(const struct rbb_hist *h, double p)
{
	double r;

	if (p <= 0)
		return 1;
	if (p >= 100)
		return h->total;
	r = ceil(p / 100.0 * (double)h->total);
	if (r < 1)
		r = 1;
	if (r > (double)h->total)
		r = (double)h->total;
	return (uint64_t)r;
}

uint64_t rbb_hist_percentile(const struct rbb_hist *h, double p)
{
	unsigned i;

	if (!h->total)
		return 0;
	if (p <= 0)
		return h->min;
	i = index_of_rank(h, rank_of(h, p), NULL);
	return clamp_value(h, lowest_of_index(i) + width_of_index(i) - 1);
}

double rbb_hist_mean(const struct rbb_hist *h)
{
	if (!h->total)
		return 0;
	return h->sum / (double)h->total;
}

double rbb_hist_stddev(const struct rbb_hist *h)
{
	double mean, var;

	if (!h->total)
		return 0;
	mean = rbb_hist_mean(h);
	var = h->sum_sq / (double)h->total - mean * mean;
	return var > 0 ? sqrt(var) : 0;
}

int rbb_hist_write_hgrm(const struct rbb_hist *h, FILE *f, double unit_ns, unsigned ticks_per_half)
{
	unsigned buckets = 0;
	double p = 0;

	if (!ticks_per_half)
		ticks_per_half = 5;
	fprintf(f, "%12s %14s %10s %14s\n\n", "Value", "Percentile", "TotalCount",
	        "1/(1-Percentile)");
	/*
	 * HdrHistogram's percentile iteration: the step halves each time the
	 * remaining distance to 100% halves, so the tail gets as many lines
	 * as the body. Stop once the bucket of the maximum is reached.
	 */
	while (h->total) {
		uint64_t cum;
		unsigned i = index_of_rank(h, rank_of(h, p), &cum);
		uint64_t v = clamp_value(h, lowest_of_index(i) + width_of_index(i) - 1);
		double ticks;

		if (v >= h->max || p >= 100)
			break;
		fprintf(f, "%12.3f %2.12f %10llu %14.2f\n", (double)v / unit_ns, p / 100.0,
		        (unsigned long long)cum, 1.0 / (1.0 - p / 100.0));
		ticks = ticks_per_half * pow(2.0, floor(log2(100.0 / (100.0 - p))) + 1);
		p += 100.0 / ticks;
	}
	fprintf(f, "%12.3f %2.12f %10llu\n", (double)(h->total ? h->max : 0) / unit_ns, 1.0,
	        (unsigned long long)h->total);
	fprintf(f, "#[Mean    = %12.3f, StdDeviation   = %12.3f]\n", rbb_hist_mean(h) / unit_ns,
	        rbb_hist_stddev(h) / unit_ns);
	fprintf(f, "#[Max     = %12.3f, Total count    = %12llu]\n",
	        (double)(h->total ? h->max : 0) / unit_ns, (unsigned long long)h->total);
	for (unsigned i = SUB; i < h->n_counts; i += HALF)
		buckets++;
	fprintf(f, "#[Buckets = %12u, SubBuckets     = %12u]\n", buckets + 1, SUB);
	return ferror(f) ? -EIO : 0;
}
