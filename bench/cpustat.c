// SPDX-License-Identifier: MIT
#include "cpustat.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Reads a whole small file into @buf (NUL-terminated). Returns its length or -errno. */
static ssize_t slurp(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "re");
	size_t n;

	if (!f)
		return -errno;
	n = fread(buf, 1, len - 1, f);
	fclose(f);
	buf[n] = '\0';
	return (ssize_t)n;
}

/* "user nice system idle iowait irq softirq steal ..." after the label. */
static int parse_times(const char *p, uint64_t *busy, uint64_t *all)
{
	uint64_t v[8] = {0};
	int n = 0;

	while (n < 8) {
		char *end;

		while (*p == ' ')
			p++;
		if (!isdigit((unsigned char)*p))
			break;
		v[n++] = strtoull(p, &end, 10);
		p = end;
	}
	/* Kernels since 2.6.11 have at least eight fields; accept the four of older ones. */
	if (n < 4)
		return -EINVAL;
	*busy = v[0] + v[1] + v[2] + v[5] + v[6];
	*all = *busy + v[3] + v[4] + v[7];
	return 0;
}

int rbb_cpustat_parse(const char *text, struct rbb_cpustat *out)
{
	bool have_total = false;
	const char *line = text;

	memset(out, 0, sizeof(*out));
	while (line && *line) {
		const char *nl = strchr(line, '\n');

		if (!strncmp(line, "cpu ", 4)) {
			if (parse_times(line + 4, &out->busy, &out->all) < 0)
				return -EINVAL;
			have_total = true;
		} else if (!strncmp(line, "cpu", 3) && isdigit((unsigned char)line[3])) {
			char *end;
			unsigned long cpu = strtoul(line + 3, &end, 10);
			uint64_t b, a;

			if (*end != ' ' || parse_times(end, &b, &a) < 0)
				return -EINVAL;
			if (cpu < RBB_MAX_CPUS) {
				out->cpu_busy[cpu] = b;
				out->cpu_all[cpu] = a;
				out->cpu_seen[cpu] = 1;
				out->n_cpus++;
			}
		}
		line = nl ? nl + 1 : NULL;
	}
	return have_total ? 0 : -EINVAL;
}

int rbb_cpustat_read(const char *path, struct rbb_cpustat *out)
{
	/* Room for a few hundred CPUs' lines plus the interrupt counters. */
	static _Thread_local char buf[256 * 1024];
	ssize_t n = slurp(path ? path : "/proc/stat", buf, sizeof(buf));

	if (n < 0)
		return (int)n;
	return rbb_cpustat_parse(buf, out);
}

double rbb_cpustat_busy_s(const struct rbb_cpustat *a, const struct rbb_cpustat *b, long hz)
{
	if (b->busy < a->busy || hz <= 0)
		return 0;
	return (double)(b->busy - a->busy) / (double)hz;
}

double rbb_cpustat_util(const struct rbb_cpustat *a, const struct rbb_cpustat *b, int cpu)
{
	uint64_t busy0, busy1, all0, all1;

	if (cpu < 0) {
		busy0 = a->busy, busy1 = b->busy, all0 = a->all, all1 = b->all;
	} else {
		if (cpu >= RBB_MAX_CPUS || !a->cpu_seen[cpu] || !b->cpu_seen[cpu])
			return -1;
		busy0 = a->cpu_busy[cpu], busy1 = b->cpu_busy[cpu];
		all0 = a->cpu_all[cpu], all1 = b->cpu_all[cpu];
	}
	if (all1 <= all0 || busy1 < busy0)
		return -1;
	return (double)(busy1 - busy0) / (double)(all1 - all0);
}

int rbb_pidstat_parse(const char *text, pid_t *ppid, uint64_t *ticks)
{
	unsigned long long ut, st;
	long long cut, cst;
	int pp;
	/* The command name may hold spaces and parentheses: skip past the last ')'. */
	const char *p = strrchr(text, ')');

	/* After ')': state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17). */
	if (!p || sscanf(p + 1, " %*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %lld %lld",
	                 &pp, &ut, &st, &cut, &cst) != 5)
		return -EINVAL;
	*ppid = (pid_t)pp;
	*ticks = ut + st + (uint64_t)(cut > 0 ? cut : 0) + (uint64_t)(cst > 0 ? cst : 0);
	return 0;
}

struct proc_ent {
	pid_t pid, ppid;
	uint64_t ticks;
	bool in;
};

/* Every process's parent and CPU ticks. Returns the count or -errno. */
static int list_procs(const char *proc, struct proc_ent **out)
{
	struct proc_ent *v = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	DIR *d = opendir(proc);

	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		char path[300], buf[1024];
		struct proc_ent e = {0};

		if (!isdigit((unsigned char)de->d_name[0]))
			continue;
		snprintf(path, sizeof(path), "%s/%s/stat", proc, de->d_name);
		/* A process may exit between readdir and here: skip it. */
		if (slurp(path, buf, sizeof(buf)) <= 0 || rbb_pidstat_parse(buf, &e.ppid, &e.ticks))
			continue;
		e.pid = (pid_t)atoi(de->d_name);
		if (n == cap) {
			struct proc_ent *nv = realloc(v, (cap = cap ? 2 * cap : 256) * sizeof(*v));

			if (!nv) {
				free(v);
				closedir(d);
				return -ENOMEM;
			}
			v = nv;
		}
		v[n++] = e;
	}
	closedir(d);
	*out = v;
	return (int)n;
}

/* Marks @pid and its descendants; returns how many. */
static unsigned mark_tree(struct proc_ent *v, int n, pid_t pid)
{
	unsigned count = 0;
	bool grew = true;

	for (int i = 0; i < n; i++)
		if ((v[i].in = v[i].pid == pid))
			count++;
	/* Parents before children is not guaranteed: repeat until nothing is added. */
	while (grew && count) {
		grew = false;
		for (int i = 0; i < n; i++) {
			if (v[i].in)
				continue;
			for (int j = 0; j < n; j++) {
				if (v[j].in && v[j].pid == v[i].ppid) {
					v[i].in = grew = true;
					count++;
					break;
				}
			}
		}
	}
	return count;
}

int rbb_tree_cpu(const char *proc, pid_t pid, double *seconds, unsigned *nprocs)
{
	struct proc_ent *v = NULL;
	uint64_t ticks = 0;
	unsigned count;
	int n;

	if (!proc)
		proc = "/proc";
	n = list_procs(proc, &v);
	if (n < 0) {
		char path[300], buf[1024];
		pid_t pp;

		snprintf(path, sizeof(path), "%s/%d/stat", proc, (int)pid);
		if (slurp(path, buf, sizeof(buf)) <= 0 || rbb_pidstat_parse(buf, &pp, &ticks))
			return -ESRCH;
		*seconds = (double)ticks / (double)sysconf(_SC_CLK_TCK);
		*nprocs = 1;
		return n;
	}
	count = mark_tree(v, n, pid);
	for (int i = 0; i < n; i++)
		if (v[i].in)
			ticks += v[i].ticks;
	free(v);
	if (!count)
		return -ESRCH;
	*seconds = (double)ticks / (double)sysconf(_SC_CLK_TCK);
	*nprocs = count;
	return 0;
}

static int count_fds(const char *proc, pid_t pid)
{
	char path[300];
	struct dirent *de;
	int n = 0;
	DIR *d;

	snprintf(path, sizeof(path), "%s/%d/fd", proc, (int)pid);
	d = opendir(path);
	if (!d)
		return -errno;
	while ((de = readdir(d)))
		n += de->d_name[0] != '.';
	closedir(d);
	return n;
}

int rbb_tree_fds(const char *proc, pid_t pid)
{
	struct proc_ent *v = NULL;
	int n, total = 0, fds;

	if (!proc)
		proc = "/proc";
	n = list_procs(proc, &v);
	if (n < 0)
		return count_fds(proc, pid);
	if (!mark_tree(v, n, pid)) {
		free(v);
		return -ESRCH;
	}
	for (int i = 0; i < n; i++) {
		if (!v[i].in)
			continue;
		fds = count_fds(proc, v[i].pid);
		if (fds > 0)
			total += fds;
	}
	free(v);
	return total;
}
