/* SPDX-License-Identifier: MIT */
/* Server lifecycle: configuration, engines, workers, stop, stats. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/random.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal.h"
#include "rb_config.h"

/* What the configuration asks of the engine, against what it can do. */
static int check_engine(const struct rb_engine_desc *eng, const struct rb_config *cfg, char *err,
                        size_t errlen)
{
	if (cfg->copy == RB_COPY_SPLICE && !(eng->caps & RB_CAP_SPLICE)) {
		snprintf(err, errlen, "--copy splice is not supported by the %s engine", eng->name);
		return -EINVAL;
	}
	if (cfg->forward && !(eng->caps & RB_CAP_RELAY)) {
		snprintf(err, errlen, "--forward is not supported by the %s engine", eng->name);
		return -EINVAL;
	}
	if (cfg->service != RB_SERVICE_ECHO && !(eng->caps & RB_CAP_SERVICES)) {
		snprintf(err, errlen, "--service %s is not supported by the %s engine",
		         rb_service_name(cfg->service), eng->name);
		return -EINVAL;
	}
	if ((cfg->idle_timeout_ms || cfg->write_timeout_ms) && !(eng->caps & RB_CAP_TIMEOUTS)) {
		snprintf(err, errlen, "--%s-timeout is not supported by the %s engine",
		         cfg->idle_timeout_ms ? "idle" : "write", eng->name);
		return -EINVAL;
	}
	if (rb_impair_any(&cfg->impair) && !(eng->caps & RB_CAP_IMPAIR)) {
		snprintf(err, errlen, "%s is not supported by the %s engine",
		         rb__impair_first_flag(&cfg->impair), eng->name);
		return -EINVAL;
	}
	if (cfg->trigger != RB_TRIGGER_EDGE && !(eng->caps & RB_CAP_LEVEL)) {
		snprintf(err, errlen, "--trigger %s is not supported by the %s engine",
		         rb_trigger_name(cfg->trigger), eng->name);
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
	if (a->ss.ss_family == AF_INET && ((const struct sockaddr_in *)&a->ss)->sin_port == 0)
		return false;
	if (a->ss.ss_family == AF_INET6 && ((const struct sockaddr_in6 *)&a->ss)->sin6_port == 0)
		return false;
	return memcmp(&a->ss, &b->ss, a->len) == 0;
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

/* A seed nobody asked for: from the kernel, else the clock. */
static uint64_t pick_seed(void)
{
	uint64_t seed = 0;

	if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed))
		seed = rb__now_us() ^ ((uint64_t)getpid() << 32);
	/* Short enough to type back in. */
	return seed % 1000000000u;
}

/* Publish a set (NULL: none); the one it replaces is kept until destroy. */
static int impair_publish(struct rb_server *srv, const struct rb_impair *imp, uint64_t seed)
{
	struct rb_impair_set *is = calloc(1, sizeof(*is));

	if (!is)
		return -ENOMEM;
	is->cfg = *imp;
	is->cfg.seed = seed;
	is->cfg.seed_set = true;
	is->session = rb__impair_session_any(imp);
	is->udp = rb__impair_udp_any(imp);
	pthread_mutex_lock(&srv->impair_lock);
	is->older = srv->impair;
	srv->cfg.impair = is->cfg;
	__atomic_store_n(&srv->impair, is, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&srv->impair_lock);
	return 0;
}

int rb_server_set_impair(struct rb_server *srv, const struct rb_impair *imp, char *err,
                         size_t errlen)
{
	char dummy[8];
	uint64_t seed;
	int rc;

	if (!err) {
		err = dummy;
		errlen = sizeof(dummy);
	}
	rc = rb__impair_check(imp, srv->upstream != NULL, srv->cfg.service == RB_SERVICE_ECHO, err,
	                      errlen);
	if (rc < 0)
		return rc;
	if (rb_impair_any(imp) && !(srv->eng->caps & RB_CAP_IMPAIR)) {
		snprintf(err, errlen, "%s is not supported by the %s engine",
		         rb__impair_first_flag(imp), srv->eng->name);
		return -ENOTSUP;
	}
	if (rb__impair_udp_any(imp) && !(srv->eng->caps & RB_CAP_UDP_IMPAIR)) {
		for (size_t i = 0; i < srv->ls.n; i++) {
			if (srv->ls.addrs[i].is_udp) {
				snprintf(err, errlen, "%s is not supported on UDP by the %s engine",
				         rb__impair_first_flag(imp), srv->eng->name);
				return -ENOTSUP;
			}
		}
	}
	pthread_mutex_lock(&srv->impair_lock);
	seed = imp->seed_set ? imp->seed : srv->cfg.impair.seed;
	pthread_mutex_unlock(&srv->impair_lock);
	rc = impair_publish(srv, imp, seed);
	if (rc < 0)
		snprintf(err, errlen, "out of memory");
	return rc;
}

void rb_server_impair(const struct rb_server *srv, struct rb_impair *out)
{
	const struct rb_impair_set *is = __atomic_load_n(&srv->impair, __ATOMIC_ACQUIRE);

	if (is)
		*out = is->cfg;
	else
		*out = srv->cfg.impair;
}

int rb_server_create(const struct rb_config *cfg, struct rb_server **out, char *err, size_t errlen)
{
	char dummy[8];
	struct rb_server *srv;
	int rc;

	if (!err) {
		err = dummy;
		errlen = sizeof(dummy);
	}
	*out = NULL;
	rc = rb_config_check(cfg, err, errlen);
	if (rc < 0)
		return rc;
	srv = calloc(1, sizeof(*srv));
	if (!srv) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	srv->cfg = *cfg;
	pthread_mutex_init(&srv->impair_lock, NULL);
	rb__listen_set_init(&srv->ls);
	rb__log_bind(&srv->cfg); /* until create returns (logs in this thread) */

	if (cfg->engine == RB_ENGINE_AUTO) {
		srv->eng = rb__engine_auto();
		if (!srv->eng) {
			snprintf(err, errlen, "no engine can run here");
			rc = -ENOSYS;
			goto fail;
		}
	} else {
		rc = rb_engine_available(cfg->engine, err, errlen);
		if (rc < 0)
			goto fail;
		srv->eng = rb__engine_find(cfg->engine);
	}
	rc = check_engine(srv->eng, cfg, err, errlen);
	if (rc < 0)
		goto fail;
	/* Impairments: the seed is chosen now, so the start-up line can say it. */
	srv->cfg.impair.seed = cfg->impair.seed_set ? cfg->impair.seed : pick_seed();
	srv->cfg.impair.seed_set = true;
	if (rb_impair_any(&cfg->impair) &&
	    impair_publish(srv, &cfg->impair, srv->cfg.impair.seed) < 0) {
		snprintf(err, errlen, "out of memory");
		rc = -ENOMEM;
		goto fail;
	}
	if (cfg->busy_poll_us) {
		/* Try it where it is refused: above net.core.busy_read it needs
		 * CAP_NET_ADMIN. */
		int probe = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0),
		    us = (int)cfg->busy_poll_us;
		if (probe >= 0 &&
		    setsockopt(probe, SOL_SOCKET, SO_BUSY_POLL, &us, sizeof(us)) < 0) {
			rc = -errno;
			snprintf(err, errlen, "--busy-poll %u is not permitted here: %s%s",
			         cfg->busy_poll_us, strerror(-rc),
			         rc == -EPERM ? " (above net.core.busy_read it needs CAP_NET_ADMIN)"
			                      : "");
			close(probe);
			goto fail;
		}
		if (probe >= 0)
			close(probe);
	}
	if (srv->eng->model->check && (rc = srv->eng->model->check(cfg, err, errlen)) < 0)
		goto fail;

	if (cfg->forward) {
		srv->upstream = calloc(1, sizeof(*srv->upstream));
		if (!srv->upstream) {
			snprintf(err, errlen, "out of memory");
			rc = -ENOMEM;
			goto fail;
		}
		rc = rb__upstream_parse(cfg->forward, srv->upstream, err, errlen);
		if (rc < 0)
			goto fail;
	}
	for (size_t i = 0; i < cfg->n_listen; i++) {
		rc = rb__parse_url(cfg->listen[i], &srv->ls.addrs[i], err, errlen);
		if (rc < 0)
			goto fail;
	}
	srv->ls.n = cfg->n_listen;
	for (size_t i = 0; i < srv->ls.n; i++) {
		if (srv->ls.addrs[i].is_udp && !(srv->eng->caps & RB_CAP_UDP)) {
			snprintf(err, errlen, "listen URL '%s': the %s engine does not serve UDP",
			         srv->ls.addrs[i].url, srv->eng->name);
			rc = -EINVAL;
			goto fail;
		}
		if (srv->ls.addrs[i].is_udp && rb__impair_udp_any(&cfg->impair) &&
		    !(srv->eng->caps & RB_CAP_UDP_IMPAIR)) {
			snprintf(err, errlen,
			         "listen URL '%s': %s is not supported on UDP by the %s engine",
			         srv->ls.addrs[i].url, rb__impair_first_flag(&cfg->impair),
			         srv->eng->name);
			rc = -EINVAL;
			goto fail;
		}
		if (srv->ls.addrs[i].is_unix && !(srv->eng->caps & RB_CAP_UNIX)) {
			snprintf(err, errlen,
			         "listen URL '%s': the %s engine does not serve UNIX sockets",
			         srv->ls.addrs[i].url, srv->eng->name);
			rc = -EINVAL;
			goto fail;
		}
		if (srv->ls.addrs[i].is_udp && cfg->forward) {
			snprintf(err, errlen,
			         "listen URL '%s': --forward relays TCP and UNIX stream listeners, "
			         "not UDP",
			         srv->ls.addrs[i].url);
			rc = -EINVAL;
			goto fail;
		}
		/* UDP always (a flow stays on one worker, never reordered);
		 * TCP with --reuseport (the kernel spreads new peers). */
		srv->ls.per_worker[i] = (srv->ls.addrs[i].is_udp ||
		                         (cfg->reuseport && !srv->ls.addrs[i].is_unix)) &&
		                        srv->ls.addrs[i].inherited_fd < 0 && cfg->threads > 1;
	}
	for (size_t i = 0; i < srv->ls.n; i++) {
		for (size_t j = 0; j < i; j++) {
			if (same_address(&srv->ls.addrs[i], &srv->ls.addrs[j])) {
				snprintf(err, errlen, "listen URL '%s' is given twice",
				         cfg->listen[i]);
				rc = -EINVAL;
				goto fail;
			}
		}
	}
	for (size_t i = 0; i < srv->ls.n; i++) {
		struct rb_listen_opts o = {
		        .backlog = cfg->backlog,
		        .reuseport = srv->ls.per_worker[i],
		        .unix_mode = cfg->unix_mode,
		};
		rc = rb__listen(&srv->ls.addrs[i], &o, err, errlen);
		if (rc < 0)
			goto fail;
		srv->ls.fds[i] = rc;
		srv->ls.ports[i] = bound_port(rc);
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
	srv->ls.holders = cfg->threads;
	srv->workers = calloc(srv->n_workers, sizeof(*srv->workers));
	if (!srv->workers) {
		snprintf(err, errlen, "out of memory");
		rc = -ENOMEM;
		goto fail;
	}
	for (unsigned i = 0; i < srv->n_workers; i++) {
		rc = rb__worker_init(&srv->workers[i], srv, i);
		if (rc == 0)
			rc = srv->eng->model->worker_init(&srv->workers[i]);
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

	/* The worker logs with its server's settings while it runs. */
	rb__log_bind(&w->srv->cfg);
	if (w->id < w->srv->cfg.n_cpus) {
		cpu_set_t set;
		int err;
		CPU_ZERO(&set);
		CPU_SET(w->srv->cfg.cpus[w->id], &set);
		err = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
		if (err)
			rb__log(RB_LOG_ERR, "worker %u: cannot run on CPU %d: %s", w->id,
			        w->srv->cfg.cpus[w->id], strerror(err));
	}
	w->result = w->srv->eng->model->run(w);
	rb__log_unbind(&w->srv->cfg);
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

void rb_server_destroy(struct rb_server *srv)
{
	if (!srv)
		return;
	if (srv->workers) {
		for (unsigned i = 0; i < srv->n_workers; i++)
			if (srv->workers[i].srv) {
				srv->eng->model->worker_fini(&srv->workers[i]);
				rb__worker_fini(&srv->workers[i]);
			}
		free(srv->workers);
	}
	rb__listen_set_close(&srv->ls);
	free(srv->upstream);
	for (struct rb_impair_set *is = srv->impair, *older; is; is = older) {
		older = is->older;
		free(is);
	}
	pthread_mutex_destroy(&srv->impair_lock);
	rb__log_unbind(&srv->cfg);
	free(srv);
}

const char *rb_server_listen_url(const struct rb_server *srv, size_t idx)
{
	return idx < srv->ls.n ? srv->ls.addrs[idx].url : NULL;
}

int rb_server_port(const struct rb_server *srv, size_t idx)
{
	if (idx >= srv->ls.n)
		return -EINVAL;
	return srv->ls.ports[idx];
}

enum rb_engine rb_server_engine(const struct rb_server *srv)
{
	return srv->eng->id;
}

const char *rb_server_engine_detail(const struct rb_server *srv)
{
	if (srv->eng->model->detail && srv->n_workers)
		return srv->eng->model->detail(&srv->workers[0]);
	return "";
}
