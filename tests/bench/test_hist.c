// SPDX-License-Identifier: MIT
/* The log-linear histogram: percentiles of known distributions, precision, hgrm output. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hist.h"

static struct rbb_hist *h;

static void setup(void)
{
	cr_assert_eq(rbb_hist_create(&h), 0);
}

static void teardown(void)
{
	rbb_hist_destroy(h);
}

TestSuite(hist, .init = setup, .fini = teardown);

/* "About 3 significant digits": within 0.1% of the exact value, never below it. */
static void assert_close(uint64_t got, uint64_t exact, const char *what)
{
	cr_assert_geq(got, exact, "%s: %llu below exact %llu", what, (unsigned long long)got,
	              (unsigned long long)exact);
	cr_assert_leq((double)(got - exact), (double)exact / 1000.0, "%s: %llu vs exact %llu", what,
	              (unsigned long long)got, (unsigned long long)exact);
}

Test(hist, empty)
{
	cr_assert_eq(h->total, 0);
	cr_assert_eq(rbb_hist_percentile(h, 50), 0);
	cr_assert_eq(rbb_hist_percentile(h, 100), 0);
	cr_assert_eq(rbb_hist_mean(h), 0);
}

Test(hist, constant)
{
	rbb_hist_record_n(h, 1234567, 10000);
	cr_assert_eq(h->total, 10000);
	cr_assert_eq(h->min, 1234567);
	cr_assert_eq(h->max, 1234567);
	/* Clamping to [min, max] makes a constant exact at every percentile. */
	for (double p = 0; p <= 100; p += 12.5)
		cr_assert_eq(rbb_hist_percentile(h, p), 1234567, "p%g", p);
	cr_assert_float_eq(rbb_hist_mean(h), 1234567.0, 1e-6);
	cr_assert_float_eq(rbb_hist_stddev(h), 0.0, 1e-3);
}

Test(hist, uniform)
{
	const uint64_t n = 200000;
	const double ps[] = {1, 10, 25, 50, 75, 90, 99, 99.9, 99.99};

	/* 1 us .. 200 ms in steps of 1 us. */
	for (uint64_t i = 1; i <= n; i++)
		rbb_hist_record(h, i * 1000);
	cr_assert_eq(h->min, 1000);
	cr_assert_eq(h->max, n * 1000);
	for (unsigned k = 0; k < sizeof(ps) / sizeof(ps[0]); k++) {
		uint64_t rank = (uint64_t)ceil(ps[k] / 100.0 * (double)n);
		char what[32];

		snprintf(what, sizeof(what), "p%g", ps[k]);
		assert_close(rbb_hist_percentile(h, ps[k]), rank * 1000, what);
	}
	cr_assert_eq(rbb_hist_percentile(h, 100), n * 1000);
	cr_assert_float_eq(rbb_hist_mean(h), (double)(n + 1) / 2 * 1000, 1.0);
}

Test(hist, bimodal)
{
	/* 90% fast at 100 us, 10% slow at 10 ms (a GC pause, say). */
	rbb_hist_record_n(h, 100000, 9000);
	rbb_hist_record_n(h, 10000000, 1000);
	assert_close(rbb_hist_percentile(h, 50), 100000, "p50");
	assert_close(rbb_hist_percentile(h, 90), 100000, "p90");
	assert_close(rbb_hist_percentile(h, 90.01), 10000000, "p90.01");
	assert_close(rbb_hist_percentile(h, 99), 10000000, "p99");
	cr_assert_eq(rbb_hist_percentile(h, 100), 10000000);
	cr_assert_eq(rbb_hist_percentile(h, 0), 100000);
}

Test(hist, precision_over_the_whole_range)
{
	/* Every value from 1 us to 60 s shares its bucket only with values within 0.1%. */
	for (uint64_t v = 1000; v <= RBB_HIST_MAX; v += v / 997 + 1) {
		uint64_t lo = rbb_hist_lowest_equiv(v), hi = rbb_hist_highest_equiv(v);

		cr_assert(lo <= v && v <= hi, "%llu not in [%llu, %llu]", (unsigned long long)v,
		          (unsigned long long)lo, (unsigned long long)hi);
		cr_assert_leq((double)(hi - lo), (double)lo / 1000.0, "bucket of %llu too wide",
		              (unsigned long long)v);
		/* Buckets tile the line: the next one starts right after. */
		cr_assert_eq(rbb_hist_lowest_equiv(hi + 1), hi + 1);
	}
	/* Below 2048 ns values are exact. */
	for (uint64_t v = 0; v < 2048; v++)
		cr_assert_eq(rbb_hist_highest_equiv(v), v);
}

Test(hist, saturates_above_60s)
{
	rbb_hist_record(h, 100ULL * 1000000000ULL);
	rbb_hist_record(h, 5);
	cr_assert_eq(h->saturated, 1);
	cr_assert_eq(h->max, RBB_HIST_MAX);
	cr_assert_eq(rbb_hist_percentile(h, 100), RBB_HIST_MAX);
	cr_assert_eq(rbb_hist_percentile(h, 50), 5);
}

Test(hist, merge_equals_recording_together)
{
	struct rbb_hist *a, *all;

	cr_assert_eq(rbb_hist_create(&a), 0);
	cr_assert_eq(rbb_hist_create(&all), 0);
	for (uint64_t i = 0; i < 5000; i++) {
		uint64_t v = (i * 7919) % 3000000 + 1000;

		rbb_hist_record(i % 2 ? h : a, v);
		rbb_hist_record(all, v);
	}
	rbb_hist_merge(h, a);
	cr_assert_eq(h->total, all->total);
	cr_assert_eq(h->min, all->min);
	cr_assert_eq(h->max, all->max);
	for (double p = 1; p < 100; p += 7)
		cr_assert_eq(rbb_hist_percentile(h, p), rbb_hist_percentile(all, p));
	cr_assert_eq(memcmp(h->counts, all->counts, h->n_counts * sizeof(*h->counts)), 0);
	rbb_hist_reset(h);
	cr_assert_eq(h->total, 0);
	rbb_hist_destroy(a);
	rbb_hist_destroy(all);
	rbb_hist_destroy(NULL);
}

Test(hist, hgrm_format)
{
	char *text = NULL, *line, *save = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	double last_value = 0, last_p = -1;
	unsigned rows = 0;
	bool saw_last = false;

	for (uint64_t i = 1; i <= 10000; i++)
		rbb_hist_record(h, i * 1000);
	cr_assert_eq(rbb_hist_write_hgrm(h, f, 1000.0, 5), 0);
	fclose(f);
	cr_assert(!strncmp(text, "       Value     Percentile TotalCount 1/(1-Percentile)\n\n", 57),
	          "header: %.60s", text);
	for (line = strtok_r(text + 57, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		double v, p, inv;
		unsigned long long count;
		int n;

		if (line[0] == '#')
			break;
		n = sscanf(line, "%lf %lf %llu %lf", &v, &p, &count, &inv);
		cr_assert(n == 4 || n == 3, "bad row '%s'", line);
		cr_assert_geq(v, last_value);
		cr_assert_gt(p, last_p);
		last_value = v;
		last_p = p;
		saw_last = n == 3;
		rows++;
	}
	cr_assert(saw_last, "no final 100%% row");
	cr_assert_float_eq(last_p, 1.0, 1e-12);
	cr_assert_float_eq(last_value, 10000.0, 1e-9);
	cr_assert_gt(rows, 20);
	cr_assert(line && !strncmp(line, "#[Mean    = ", 12), "footer: %s", line ? line : "");
	line = strtok_r(NULL, "\n", &save);
	cr_assert(line && !strcmp(line, "#[Max     =    10000.000, Total count    =        10000]"),
	          "max line: %s", line ? line : "");
	free(text);
}
