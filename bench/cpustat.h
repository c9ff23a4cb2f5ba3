/* SPDX-License-Identifier: MIT */
/*
 * CPU accounting from /proc: the whole machine's busy time per CPU
 * (/proc/stat), a process tree's CPU time and a process's descriptors.
 * Parsers take text so that tests can feed them fixtures.
 */
#ifndef RBB_CPUSTAT_H
#define RBB_CPUSTAT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define RBB_MAX_CPUS 512

/* One /proc/stat snapshot, in clock ticks (USER_HZ). */
struct rbb_cpustat {
	unsigned n_cpus; /* cpuN lines seen */
	/* busy = user + nice + system + irq + softirq; all = busy + idle + iowait + steal */
	uint64_t busy, all;                                     /* the "cpu" line */
	uint64_t cpu_busy[RBB_MAX_CPUS], cpu_all[RBB_MAX_CPUS]; /* by CPU number */
	uint8_t cpu_seen[RBB_MAX_CPUS];
};

/* Parses /proc/stat text. Returns 0, or -EINVAL when the "cpu" line is missing or malformed. */
int rbb_cpustat_parse(const char *text, struct rbb_cpustat *out);
/* Reads /proc/stat (or @path when not NULL). Returns 0 or -errno. */
int rbb_cpustat_read(const char *path, struct rbb_cpustat *out);
/* Busy CPU seconds of the whole machine from @a to @b, at @hz ticks per second. */
double rbb_cpustat_busy_s(const struct rbb_cpustat *a, const struct rbb_cpustat *b, long hz);
/*
 * Busy fraction (0 to 1) of CPU @cpu from @a to @b, or of all CPUs for
 * @cpu < 0 (busy over all, so 2 CPUs half busy is 0.5). Returns -1 when
 * the CPU is not in both snapshots or no time passed.
 */
double rbb_cpustat_util(const struct rbb_cpustat *a, const struct rbb_cpustat *b, int cpu);

/*
 * Parses /proc/PID/stat text: the parent pid, and utime + stime + cutime +
 * cstime in ticks (the children's part is that of waited-for children, so
 * a forking server's finished workers count). Returns 0 or -EINVAL.
 */
int rbb_pidstat_parse(const char *text, pid_t *ppid, uint64_t *ticks);
/*
 * CPU seconds of @pid and all its live descendants (walking /proc, or
 * @proc when not NULL). *nprocs is how many processes were counted.
 * Returns 0, -ESRCH when @pid is gone, or another -errno when /proc could
 * not be walked (then only @pid itself is counted and 1 is returned).
 */
int rbb_tree_cpu(const char *proc, pid_t pid, double *seconds, unsigned *nprocs);
/* Open descriptors of @pid and its live descendants. Returns the count or -errno. */
int rbb_tree_fds(const char *proc, pid_t pid);

#endif
