/* SPDX-License-Identifier: MIT */
/*
 * Configuration: defaults, names, sizes, and the one validation of a
 * configuration against the limits (rb_limits.h). Messages name a value by its
 * rebound(1) flag, so the CLI prints them as they are.
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>

#include "impair.h"
#include "rb_limits.h"
#include "rebound/rebound.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

static const char *const copy_names[] = {[RB_COPY_WRITEV] = "writev", [RB_COPY_SPLICE] = "splice"};
static const char *const service_names[] = {
        [RB_SERVICE_ECHO] = "echo",
        [RB_SERVICE_DISCARD] = "discard",
        [RB_SERVICE_CHARGEN] = "chargen",
        [RB_SERVICE_SOCKPERF] = "sockperf",
};
static const char *const trigger_names[] = {
        [RB_TRIGGER_EDGE] = "edge", [RB_TRIGGER_LEVEL] = "level"};

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

static int parse_name(const char *s, const char *const *names, size_t n)
{
	for (size_t i = 0; s && i < n; i++)
		if (names[i] && strcmp(s, names[i]) == 0)
			return (int)i;
	return -EINVAL;
}

const char *rb_copy_name(enum rb_copy c)
{
	return (size_t)c < N_ELEMS(copy_names) ? copy_names[c] : "?";
}

const char *rb_trigger_name(enum rb_trigger t)
{
	return (size_t)t < N_ELEMS(trigger_names) ? trigger_names[t] : "?";
}

const char *rb_service_name(enum rb_service sv)
{
	return (size_t)sv < N_ELEMS(service_names) ? service_names[sv] : "?";
}

int rb_service_parse(const char *s, enum rb_service *out)
{
	int v = parse_name(s, service_names, N_ELEMS(service_names));
	if (v < 0)
		return v;
	*out = (enum rb_service)v;
	return 0;
}

int rb_copy_parse(const char *s, enum rb_copy *out)
{
	int v = parse_name(s, copy_names, N_ELEMS(copy_names));
	if (v < 0)
		return v;
	*out = (enum rb_copy)v;
	return 0;
}

int rb_trigger_parse(const char *s, enum rb_trigger *out)
{
	int v = parse_name(s, trigger_names, N_ELEMS(trigger_names));
	if (v < 0)
		return v;
	*out = (enum rb_trigger)v;
	return 0;
}

int rb_parse_size(const char *s, size_t *out)
{
	unsigned long long v = 0, mul = 1;
	const char *p = s;

	if (!s || !*s)
		return -EINVAL;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (v > (~0ull - 9) / 10)
			return -ERANGE;
		v = v * 10 + (unsigned)(*p - '0');
	}
	if (p == s)
		return -EINVAL;
	switch (*p) {
	case '\0':
		break;
	case 'k':
	case 'K':
		mul = 1ull << 10;
		p++;
		break;
	case 'm':
	case 'M':
		mul = 1ull << 20;
		p++;
		break;
	case 'g':
	case 'G':
		mul = 1ull << 30;
		p++;
		break;
	default:
		return -EINVAL;
	}
	if (*p)
		return -EINVAL;
	if (v > (unsigned long long)SIZE_MAX / mul)
		return -ERANGE;
	*out = (size_t)(v * mul);
	return 0;
}

void rb_config_init(struct rb_config *cfg)
{
	*cfg = (struct rb_config){
	        .engine = RB_ENGINE_AUTO,
	        .copy = RB_COPY_WRITEV,
	        .trigger = RB_TRIGGER_EDGE,
	        .threads = 1,
	        .chunk_size = 16u << 10,
	        .conn_buffer = 1u << 20,
	        .max_memory = 512u << 20,
	        .pipe_size = 1u << 20,
	        .pool_cache = 256,
	        .read_budget = 256u << 10,
	        .accept_budget = 64,
	        .shutdown_timeout_ms = 2000,
	        .uring_entries = 1024,
	        .uring_buffers = 4096,
	        .backlog = 4096,
	        .log_level = RB_LOG_INFO,
	        .unix_mode = 0660,
	        .udp_rate = 10000,
	        .keepalive_idle_s = 120,
	        .keepalive_intvl_s = 30,
	        .keepalive_cnt = 4,
	        .user_timeout_ms = (120 + 30 * 4) * 1000,
	        .connect_timeout_ms = 5000,
	};
}

static int out_of_range(char *err, size_t errlen, const char *flag, unsigned long long v,
                        unsigned long long min, unsigned long long max, const char *unit)
{
	snprintf(err, errlen, "invalid %s '%llu': must be between %llu and %llu%s", flag, v, min,
	         max, unit);
	return -EINVAL;
}

#define RANGE(flag, v, min, max, unit)                                                             \
	do {                                                                                       \
		if ((unsigned long long)(v) < (min) || (unsigned long long)(v) > (max))            \
			return out_of_range(err, errlen, flag, (unsigned long long)(v), (min),     \
			                    (max), unit);                                          \
	} while (0)

int rb_config_check(const struct rb_config *cfg, char *err, size_t errlen)
{
	char dummy[8];

	if (!err) {
		err = dummy;
		errlen = sizeof(dummy);
	}
	if (cfg->n_listen == 0 || cfg->n_listen > RB_MAX_LISTEN) {
		snprintf(err, errlen, "need 1 to %d listen URLs, got %zu", RB_MAX_LISTEN,
		         cfg->n_listen);
		return -EINVAL;
	}
	RANGE("--threads", cfg->threads, 1, RB_MAX_THREADS, "");
	RANGE("--chunk-size", cfg->chunk_size, RB_LIMIT_CHUNK_MIN, RB_LIMIT_CHUNK_MAX, " bytes");
	RANGE("--conn-buffer", cfg->conn_buffer, 1, RB_LIMIT_CONN_BUFFER_MAX, " bytes");
	if (cfg->max_memory && cfg->max_memory < cfg->chunk_size * cfg->threads) {
		snprintf(err, errlen,
		         "invalid --max-memory '%zu': below one chunk per worker (%zu bytes)",
		         cfg->max_memory, cfg->chunk_size * cfg->threads);
		return -EINVAL;
	}
	RANGE("--pipe-size", cfg->pipe_size, RB_LIMIT_PIPE_MIN, RB_LIMIT_PIPE_MAX, " bytes");
	RANGE("--shutdown-timeout", cfg->shutdown_timeout_ms, 0, RB_LIMIT_SHUTDOWN_MS_MAX, "");
	RANGE("--uring-entries", cfg->uring_entries, 1, RB_LIMIT_URING_ENTRIES_MAX, "");
	RANGE("--uring-buffers", cfg->uring_buffers, 1, RB_LIMIT_URING_BUFFERS_MAX, "");
	if (cfg->uring_buffers & (cfg->uring_buffers - 1)) {
		snprintf(err, errlen,
		         "invalid --uring-buffers '%u': must be a power of two (1, 2, 4 ... %u)",
		         cfg->uring_buffers, RB_LIMIT_URING_BUFFERS_MAX);
		return -EINVAL;
	}
	RANGE("--uring-sqpoll", cfg->uring_sqpoll_ms, 0, RB_LIMIT_URING_SQPOLL_MS_MAX, "");
	RANGE("--uring-batch-us", cfg->uring_batch_us, 0, RB_LIMIT_URING_BATCH_US_MAX, "");
	RANGE("--user-timeout", cfg->user_timeout_ms, 0, RB_LIMIT_USER_TIMEOUT_MS_MAX, "");
	RANGE("--udp-rate", cfg->udp_rate, 0, RB_LIMIT_UDP_RATE_MAX, "");
	RANGE("--connect-timeout", cfg->connect_timeout_ms, 1, RB_LIMIT_CONNECT_TIMEOUT_MS_MAX, "");
	RANGE("--max-conns", cfg->max_conns, 0, RB_LIMIT_MAX_CONNS, "");
	RANGE("--idle-timeout", cfg->idle_timeout_ms, 0, RB_LIMIT_TIMEOUT_MS_MAX, "");
	RANGE("--write-timeout", cfg->write_timeout_ms, 0, RB_LIMIT_TIMEOUT_MS_MAX, "");
	RANGE("--stats-interval", cfg->stats_interval_ms, 0, RB_LIMIT_TIMEOUT_MS_MAX, "");
	if (cfg->stats_interval_ms && cfg->stats_interval_ms < RB_LIMIT_STATS_INTERVAL_MIN) {
		snprintf(err, errlen,
		         "invalid --stats-interval '%u': must be 0 (off) or at least %u",
		         cfg->stats_interval_ms, RB_LIMIT_STATS_INTERVAL_MIN);
		return -EINVAL;
	}
	RANGE("--busy-poll", cfg->busy_poll_us, 0, RB_LIMIT_BUSY_POLL_US_MAX, "");
	if (cfg->n_cpus) {
		cpu_set_t allowed;
		if (cfg->n_cpus < cfg->threads || cfg->n_cpus > RB_MAX_THREADS) {
			snprintf(err, errlen,
			         "invalid --cpus: %u CPU%s for %u threads (one per thread)",
			         cfg->n_cpus, cfg->n_cpus == 1 ? "" : "s", cfg->threads);
			return -EINVAL;
		}
		if (sched_getaffinity(0, sizeof(allowed), &allowed) < 0)
			CPU_ZERO(&allowed);
		for (unsigned i = 0; i < cfg->n_cpus; i++) {
			if (cfg->cpus[i] < 0 || cfg->cpus[i] >= CPU_SETSIZE ||
			    !CPU_ISSET(cfg->cpus[i], &allowed)) {
				snprintf(
				        err, errlen,
				        "invalid --cpus: CPU %d is not one this process may run on",
				        cfg->cpus[i]);
				return -EINVAL;
			}
		}
	}
	if ((unsigned)cfg->service > RB_SERVICE_SOCKPERF) {
		snprintf(err, errlen, "invalid --service %u", (unsigned)cfg->service);
		return -EINVAL;
	}
	if (cfg->forward && cfg->service != RB_SERVICE_ECHO) {
		snprintf(err, errlen,
		         "--forward relays bytes: it cannot be combined with --service %s",
		         rb_service_name(cfg->service));
		return -EINVAL;
	}
	if (cfg->unix_mode > RB_LIMIT_UNIX_MODE_MAX) {
		snprintf(err, errlen,
		         "invalid --unix-mode '%04o': expected an octal mode from 0 to 0777, such "
		         "as 0660",
		         cfg->unix_mode);
		return -EINVAL;
	}
	if (cfg->keepalive_idle_s &&
	    (cfg->keepalive_idle_s > RB_LIMIT_KEEPALIVE_S_MAX || cfg->keepalive_intvl_s < 1 ||
	     cfg->keepalive_intvl_s > RB_LIMIT_KEEPALIVE_S_MAX || cfg->keepalive_cnt < 1 ||
	     cfg->keepalive_cnt > RB_LIMIT_KEEPALIVE_CNT_MAX)) {
		snprintf(err, errlen,
		         "invalid --keepalive '%u,%u,%u': expected off or IDLE[,INTVL,CNT] in "
		         "seconds (idle and interval 1 to %u, count 1 to %u)",
		         cfg->keepalive_idle_s, cfg->keepalive_intvl_s, cfg->keepalive_cnt,
		         RB_LIMIT_KEEPALIVE_S_MAX, RB_LIMIT_KEEPALIVE_CNT_MAX);
		return -EINVAL;
	}
	if (rb__impair_check(&cfg->impair, cfg->forward != NULL, cfg->service == RB_SERVICE_ECHO,
	                     err, errlen) < 0)
		return -EINVAL;
	if (cfg->read_budget < 1 || cfg->accept_budget < 1) {
		snprintf(err, errlen, "read and accept budgets must be at least 1");
		return -EINVAL;
	}
	return 0;
}
