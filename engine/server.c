/* SPDX-License-Identifier: MIT */
/* Server lifecycle: configuration, engines, workers, stop, stats. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal.h"
#include "rb_config.h"

static const char *const engine_names[] = {
	[RB_ENGINE_AUTO] = "auto",   [RB_ENGINE_EPOLL] = "epoll", [RB_ENGINE_POLL] = "poll",
	[RB_ENGINE_SELECT] = "select", [RB_ENGINE_URING] = "uring",
};
static const char *const copy_names[] = {[RB_COPY_WRITEV] = "writev", [RB_COPY_SPLICE] = "splice"};
static const char *const trigger_names[] = {[RB_TRIGGER_EDGE] = "edge", [RB_TRIGGER_LEVEL] = "level"};

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

static int parse_name(const char *s, const char *const *names, size_t n)
{
	for (size_t i = 0; s && i < n; i++)
		if (names[i] && strcmp(s, names[i]) == 0)
			return (int)i;
	return -EINVAL;
}

const char *rb_engine_name(enum rb_engine e)
{
	return (size_t)e < N_ELEMS(engine_names) ? engine_names[e] : "?";
}

const char *rb_copy_name(enum rb_copy c)
{
	return (size_t)c < N_ELEMS(copy_names) ? copy_names[c] : "?";
}

const char *rb_trigger_name(enum rb_trigger t)
{
	return (size_t)t < N_ELEMS(trigger_names) ? trigger_names[t] : "?";
}

int rb_engine_parse(const char *s, enum rb_engine *out)
{
	int v = parse_name(s, engine_names, N_ELEMS(engine_names));
	if (v < 0)
		return v;
	*out = (enum rb_engine)v;
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
	case 'k': case 'K':
		mul = 1ull << 10;
		p++;
		break;
	case 'm': case 'M':
		mul = 1ull << 20;
		p++;
		break;
	case 'g': case 'G':
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
	};
}

/* Readiness backends in preference order; auto takes the first that runs. */
static const struct rb_poller_ops *const pollers[] = {
	&rb__poller_epoll,
	&rb__poller_poll,
	&rb__poller_select,
};

const struct rb_poller_ops *rb__poller_find(enum rb_engine e)
{
	for (size_t i = 0; i < N_ELEMS(pollers); i++)
		if (pollers[i]->engine == e)
			return pollers[i];
	return NULL;
}

int rb_engine_available(enum rb_engine e, char *why, size_t whylen)
{
	const struct rb_poller_ops *ops;
	int rc;

	if (e == RB_ENGINE_AUTO) {
		for (size_t i = 0; i < N_ELEMS(pollers); i++)
			if (pollers[i]->probe() == 0)
				return 0;
		snprintf(why, whylen, "no engine can run here");
		return -ENOSYS;
	}
	if (e == RB_ENGINE_URING) {
#if RB_HAVE_URING
		return rb__uring_probe(why, whylen);
#else
		snprintf(why, whylen,
			 "engine 'uring' is not available: rebound was built without liburing");
		return -ENOTSUP;
#endif
	}
	ops = rb__poller_find(e);
	if (!ops) {
		snprintf(why, whylen, "engine '%s' is not built yet in rebound %s", rb_engine_name(e),
			 RB_VERSION_STRING);
		return -ENOTSUP;
	}
	rc = ops->probe();
	if (rc < 0)
		snprintf(why, whylen, "engine '%s' cannot run here: %s", ops->name, strerror(-rc));
	return rc;
}

#define CHUNK_MIN 512u
#define CHUNK_MAX (16u << 20)

static int validate(const struct rb_config *cfg, char *err, size_t errlen)
{
	if (cfg->n_listen == 0 || cfg->n_listen > RB_MAX_LISTEN) {
		snprintf(err, errlen, "need 1 to %d listen URLs, got %zu", RB_MAX_LISTEN,
			 cfg->n_listen);
		return -EINVAL;
	}
	if (cfg->threads < 1 || cfg->threads > RB_MAX_THREADS) {
		snprintf(err, errlen, "threads %u out of range (1 to %d)", cfg->threads,
			 RB_MAX_THREADS);
		return -EINVAL;
	}
	if (cfg->chunk_size < CHUNK_MIN || cfg->chunk_size > CHUNK_MAX) {
		snprintf(err, errlen, "chunk size %zu out of range (%u to %u bytes)",
			 cfg->chunk_size, CHUNK_MIN, CHUNK_MAX);
		return -EINVAL;
	}
	if (cfg->conn_buffer < 1 || cfg->conn_buffer > (1ul << 30)) {
		snprintf(err, errlen, "connection buffer %zu out of range (1 byte to 1 GiB)",
			 cfg->conn_buffer);
		return -EINVAL;
	}
	if (cfg->max_memory && cfg->max_memory < cfg->chunk_size * cfg->threads) {
		snprintf(err, errlen,
			 "memory cap %zu is below one chunk per worker (%zu bytes)",
			 cfg->max_memory, cfg->chunk_size * cfg->threads);
		return -EINVAL;
	}
	if (cfg->unix_mode > 0777) {
		snprintf(err, errlen, "unix socket mode %#o out of range (0 to 0777)", cfg->unix_mode);
		return -EINVAL;
	}
	if (cfg->keepalive_idle_s > 32767 || cfg->keepalive_intvl_s > 32767 ||
	    cfg->keepalive_cnt > 127 ||
	    (cfg->keepalive_idle_s && (!cfg->keepalive_intvl_s || !cfg->keepalive_cnt))) {
		snprintf(err, errlen,
			 "keepalive %u,%u,%u out of range (idle and interval 1 to 32767 s, "
			 "count 1 to 127)",
			 cfg->keepalive_idle_s, cfg->keepalive_intvl_s, cfg->keepalive_cnt);
		return -EINVAL;
	}
	if (cfg->read_budget < 1 || cfg->accept_budget < 1) {
		snprintf(err, errlen, "read and accept budgets must be at least 1");
		return -EINVAL;
	}
	if (cfg->copy == RB_COPY_SPLICE && cfg->engine == RB_ENGINE_URING) {
		snprintf(err, errlen, "--copy splice is not supported by the uring engine");
		return -EINVAL;
	}
	if (cfg->copy == RB_COPY_SPLICE && (cfg->pipe_size < 4096 || cfg->pipe_size > (1ul << 30))) {
		snprintf(err, errlen, "pipe size %zu out of range (4096 bytes to 1 GiB)",
			 cfg->pipe_size);
		return -EINVAL;
	}
	return 0;
}

/* Two URLs naming one address (port 0 and fd:N excepted: each is its own). */
static bool same_address(const struct rb_addr *a, const struct rb_addr *b)
{
	if (a->inherited_fd >= 0 || b->inherited_fd >= 0 || a->is_udp != b->is_udp ||
	    a->len != b->len || a->ss.ss_family != b->ss.ss_family)
		return false;
	if (a->ss.ss_family == AF_INET &&
	    ((const struct sockaddr_in *)&a->ss)->sin_port == 0)
		return false;
	if (a->ss.ss_family == AF_INET6 &&
	    ((const struct sockaddr_in6 *)&a->ss)->sin6_port == 0)
		return false;
	return memcmp(&a->ss, &b->ss, a->len) == 0;
}

bool rb__udp_per_worker(const struct rb_server *srv, size_t i)
{
	return srv->addrs[i].is_udp && srv->addrs[i].inherited_fd < 0 && srv->cfg.threads > 1;
}

static int bound_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return -errno;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return 0;
}

int rb_server_create(const struct rb_config *cfg, struct rb_server **out, char *err,
		     size_t errlen)
{
	char dummy[8];
	struct rb_server *srv;
	int rc;

	if (!err) {
		err = dummy;
		errlen = sizeof(dummy);
	}
	*out = NULL;
	rc = validate(cfg, err, errlen);
	if (rc < 0)
		return rc;
	srv = calloc(1, sizeof(*srv));
	if (!srv) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	srv->cfg = *cfg;
	for (size_t i = 0; i < RB_MAX_LISTEN; i++)
		srv->listen_fds[i] = -1;
	rb__log_bind(&srv->cfg); /* until create returns (logs in this thread) */

	srv->engine = cfg->engine;
	if (srv->engine == RB_ENGINE_AUTO) {
		for (size_t i = 0; i < N_ELEMS(pollers) && !srv->ops; i++)
			if (pollers[i]->probe() == 0)
				srv->ops = pollers[i];
		if (!srv->ops) {
			snprintf(err, errlen, "no engine can run here");
			rc = -ENOSYS;
			goto fail;
		}
		srv->engine = srv->ops->engine;
	} else {
		rc = rb_engine_available(srv->engine, err, errlen);
		if (rc < 0)
			goto fail;
		srv->ops = rb__poller_find(srv->engine); /* NULL for the completion engine */
	}

	for (size_t i = 0; i < cfg->n_listen; i++) {
		rc = rb__parse_url(cfg->listen[i], &srv->addrs[i], err, errlen);
		if (rc < 0)
			goto fail;
	}
	srv->n_listen = cfg->n_listen;
	for (size_t i = 0; i < srv->n_listen; i++) {
		if (srv->addrs[i].is_udp && srv->engine == RB_ENGINE_URING) {
			snprintf(err, errlen, "listen URL '%s': the uring engine does not serve UDP",
				 srv->addrs[i].url);
			rc = -EINVAL;
			goto fail;
		}
	}
	for (size_t i = 0; i < srv->n_listen; i++) {
		for (size_t j = 0; j < i; j++) {
			if (same_address(&srv->addrs[i], &srv->addrs[j])) {
				snprintf(err, errlen, "listen URL '%s' is given twice", cfg->listen[i]);
				rc = -EINVAL;
				goto fail;
			}
		}
	}
	for (size_t i = 0; i < srv->n_listen; i++) {
		struct rb_listen_opts o = {
			.backlog = cfg->backlog,
			.reuseport = rb__udp_per_worker(srv, i),
			.unix_mode = cfg->unix_mode,
		};
		rc = rb__listen(&srv->addrs[i], &o, err, errlen);
		if (rc < 0)
			goto fail;
		srv->listen_fds[i] = rc;
		srv->ports[i] = bound_port(rc);
	}

	if (cfg->copy == RB_COPY_SPLICE) {
		int max = rb__pipe_max_size();
		struct sigaction sa;
		srv->pipe_size = cfg->pipe_size;
		if (max > 0 && (size_t)max < srv->pipe_size) {
			rb__log(RB_LOG_INFO,
				"pipe size %zu is above fs.pipe-max-size; using %d bytes",
				srv->pipe_size, max);
			srv->pipe_size = (size_t)max;
		}
		if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
			signal(SIGPIPE, SIG_IGN);
	}
	srv->n_workers = cfg->threads;
	srv->listening_workers = cfg->threads;
	srv->workers = calloc(srv->n_workers, sizeof(*srv->workers));
	if (!srv->workers) {
		snprintf(err, errlen, "out of memory");
		rc = -ENOMEM;
		goto fail;
	}
	for (unsigned i = 0; i < srv->n_workers; i++) {
		rc = rb__worker_init(&srv->workers[i], srv, i);
		if (rc < 0) {
			snprintf(err, errlen, "cannot start worker %u: %s", i, strerror(-rc));
			goto fail;
		}
	}
	rb__log_unbind(&srv->cfg);
	*out = srv;
	return 0;
fail:
	rb_server_destroy(srv);
	return rc;
}

static void *worker_main(void *arg)
{
	struct rb_worker *w = arg;

	w->result = rb__worker_run(w);
	return NULL;
}

int rb_server_run(struct rb_server *srv)
{
	sigset_t all, old;
	int rc = 0;

	/* Extra workers take no signals: they arrive in the caller's thread. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	for (unsigned i = 1; i < srv->n_workers; i++) {
		struct rb_worker *w = &srv->workers[i];
		int err = pthread_create(&w->thread, NULL, worker_main, w);
		if (err) {
			rb__log(RB_LOG_ERR, "cannot start worker thread %u: %s", i, strerror(err));
			rb_server_stop(srv);
			rc = -err;
			break;
		}
		w->thread_started = true;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	worker_main(&srv->workers[0]);
	for (unsigned i = 1; i < srv->n_workers; i++) {
		struct rb_worker *w = &srv->workers[i];
		if (w->thread_started) {
			pthread_join(w->thread, NULL);
			w->thread_started = false;
		}
	}
	for (unsigned i = 0; i < srv->n_workers; i++)
		if (srv->workers[i].result < 0 && rc == 0)
			rc = srv->workers[i].result;
	return rc;
}

void rb_server_stop(struct rb_server *srv)
{
	int saved = errno;
	uint64_t one = 1;

	__atomic_store_n(&srv->stop_requested, 1, __ATOMIC_RELAXED);
	for (unsigned i = 0; i < srv->n_workers; i++) {
		int fd = srv->workers[i].ctl_fd;
		if (fd >= 0 && write(fd, &one, sizeof(one)) < 0) {
			/* A full eventfd already holds a wakeup: nothing to do. */
		}
	}
	errno = saved;
}

void rb_server_request_stats(struct rb_server *srv)
{
	int saved = errno;
	uint64_t one = 1;

	__atomic_store_n(&srv->stats_requested, 1, __ATOMIC_RELAXED);
	if (srv->n_workers && srv->workers[0].ctl_fd >= 0 &&
	    write(srv->workers[0].ctl_fd, &one, sizeof(one)) < 0) {
		/* A full eventfd already holds a wakeup. */
	}
	errno = saved;
}

void rb__server_close_listeners(struct rb_server *srv)
{
	for (size_t i = 0; i < RB_MAX_LISTEN; i++) {
		if (srv->listen_fds[i] < 0)
			continue;
		close(srv->listen_fds[i]);
		srv->listen_fds[i] = -1;
		rb__unix_unlink_if_ours(&srv->addrs[i]);
	}
}

void rb_server_destroy(struct rb_server *srv)
{
	if (!srv)
		return;
	if (srv->workers) {
		for (unsigned i = 0; i < srv->n_workers; i++)
			if (srv->workers[i].srv)
				rb__worker_fini(&srv->workers[i]);
		free(srv->workers);
	}
	rb__server_close_listeners(srv);
	rb__log_unbind(&srv->cfg);
	free(srv);
}

const char *rb_server_listen_url(const struct rb_server *srv, size_t idx)
{
	return idx < srv->n_listen ? srv->addrs[idx].url : NULL;
}

int rb_server_port(const struct rb_server *srv, size_t idx)
{
	if (idx >= srv->n_listen)
		return -EINVAL;
	return srv->ports[idx];
}

enum rb_engine rb_server_engine(const struct rb_server *srv)
{
	return srv->engine;
}

const char *rb_server_engine_detail(const struct rb_server *srv)
{
#if RB_HAVE_URING
	if (srv->engine == RB_ENGINE_URING && srv->n_workers)
		return rb__uring_detail(&srv->workers[0]);
#endif
	(void)srv;
	return "";
}

#define LOAD(f) __atomic_load_n(&w->st.f, __ATOMIC_RELAXED)

void rb_server_stats(const struct rb_server *srv, struct rb_stats *out)
{
	memset(out, 0, sizeof(*out));
	for (unsigned i = 0; i < srv->n_workers; i++) {
		const struct rb_worker *w = &srv->workers[i];
		uint64_t v;
#define SUM(name) out->name += v;
#define MAX(name)                                                                          \
	if (v > out->name)                                                                 \
		out->name = v;
#define FIELD(name, how, doc)                                                              \
	v = LOAD(name);                                                                    \
	how(name)
		RB_STATS(FIELD)
#undef FIELD
#undef MAX
#undef SUM
	}
}
