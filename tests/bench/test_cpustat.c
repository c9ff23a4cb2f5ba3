// SPDX-License-Identifier: MIT
/* /proc parsing and the per-CPU arithmetic, on fixtures with known numbers. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <unistd.h>

#include "cpustat.h"

static struct rbb_cpustat a, b;

static void load(void)
{
	cr_assert_eq(rbb_cpustat_read(FIXTURES "/proc_stat_a", &a), 0);
	cr_assert_eq(rbb_cpustat_read(FIXTURES "/proc_stat_b", &b), 0);
}

Test(cpustat, parses_the_total_and_every_cpu)
{
	load();
	/* busy = user + nice + system + irq + softirq; all adds idle, iowait, steal */
	cr_assert_eq(a.busy, 100 + 10 + 50 + 5 + 15);
	cr_assert_eq(a.all, 180 + 1000 + 20 + 7);
	cr_assert_eq(a.n_cpus, 2);
	cr_assert_eq(a.cpu_busy[0], 60 + 5 + 30 + 3 + 10);
	cr_assert_eq(a.cpu_all[1], 72 + 500 + 10 + 3);
	cr_assert_eq(a.cpu_seen[2], 0);
}

Test(cpustat, busy_seconds_and_utilisation)
{
	load();
	cr_assert_float_eq(rbb_cpustat_busy_s(&a, &b, 100), 3.2, 1e-12);
	cr_assert_float_eq(rbb_cpustat_busy_s(&a, &b, 250), 1.28, 1e-12);
	cr_assert_float_eq(rbb_cpustat_util(&a, &b, 0), 1.0, 1e-12);
	cr_assert_float_eq(rbb_cpustat_util(&a, &b, 1), 10.0 / 110.0, 1e-12);
	cr_assert_float_eq(rbb_cpustat_util(&a, &b, -1), 320.0 / 420.0, 1e-12);
	/* A CPU missing from a snapshot, and no time passing, give -1. */
	cr_assert_float_eq(rbb_cpustat_util(&a, &b, 2), -1, 1e-12);
	cr_assert_float_eq(rbb_cpustat_util(&a, &a, -1), -1, 1e-12);
	/* Counters going backwards (a CPU taken offline) are never negative time. */
	cr_assert_float_eq(rbb_cpustat_busy_s(&b, &a, 100), 0, 1e-12);
}

Test(cpustat, old_kernels_with_four_fields)
{
	struct rbb_cpustat s;

	cr_assert_eq(rbb_cpustat_parse("cpu  1 2 3 4\ncpu0 1 2 3 4\n", &s), 0);
	cr_assert_eq(s.busy, 6);
	cr_assert_eq(s.all, 10);
}

Test(cpustat, malformed_text_is_rejected)
{
	struct rbb_cpustat s;

	cr_assert_eq(rbb_cpustat_parse("intr 1 2 3\n", &s), -EINVAL);
	cr_assert_eq(rbb_cpustat_parse("cpu  1 2\n", &s), -EINVAL);
	cr_assert_eq(rbb_cpustat_parse("cpu  1 2 3 4\ncpu0 x\n", &s), -EINVAL);
	cr_assert_eq(rbb_cpustat_read(FIXTURES "/no-such-file", &s), -ENOENT);
}

Test(cpustat, the_live_proc_stat_parses)
{
	struct rbb_cpustat s;

	cr_assert_eq(rbb_cpustat_read(NULL, &s), 0);
	/* /proc/stat lists the online CPUs. */
	cr_assert_eq(s.n_cpus, (unsigned)sysconf(_SC_NPROCESSORS_ONLN));
	cr_assert_gt(s.all, s.busy);
}

Test(pidstat, command_names_with_parentheses_and_children)
{
	pid_t ppid;
	uint64_t ticks;

	cr_assert_eq(rbb_pidstat_parse("100 (my (odd) server) S 1 100 100 0 -1 4194304 100 0 0 0 "
	                               "250 50 7 3 20 0 1 0 1000 0 0\n",
	                               &ppid, &ticks),
	             0);
	cr_assert_eq(ppid, 1);
	cr_assert_eq(ticks, 250 + 50 + 7 + 3);
	cr_assert_eq(rbb_pidstat_parse("100 no-parens S 1 2", &ppid, &ticks), -EINVAL);
}

Test(pidstat, a_process_tree_counts_every_descendant)
{
	double hz = (double)sysconf(_SC_CLK_TCK), s;
	unsigned n;

	cr_assert_eq(rbb_tree_cpu(FIXTURES "/proc", 100, &s, &n), 0);
	cr_assert_eq(n, 3);
	cr_assert_float_eq(s, (310 + 100 + 40) / hz, 1e-9);
	cr_assert_eq(rbb_tree_cpu(FIXTURES "/proc", 101, &s, &n), 0);
	cr_assert_eq(n, 2);
	cr_assert_float_eq(s, 140 / hz, 1e-9);
	cr_assert_eq(rbb_tree_cpu(FIXTURES "/proc", 999, &s, &n), -ESRCH);
	cr_assert_eq(rbb_tree_fds(FIXTURES "/proc", 100), 5);
	cr_assert_eq(rbb_tree_fds(FIXTURES "/proc", 200), 1);
	cr_assert_eq(rbb_tree_fds(FIXTURES "/proc", 999), -ESRCH);
}
