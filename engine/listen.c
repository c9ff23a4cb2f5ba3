/* SPDX-License-Identifier: MIT */
/* --listen URLs and listening sockets. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal.h"

#define URL_HELP "expected tcp://HOST:PORT, tcp://[IPV6]:PORT, udp://HOST:PORT, unix:PATH or fd:N"

static int parse_port(const char *s, unsigned *out)
{
	char *end;
	unsigned long v;

	if (!*s || strspn(s, "0123456789") != strlen(s))
		return -EINVAL;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || v > 65535)
		return -ERANGE;
	*out = (unsigned)v;
	return 0;
}

static int parse_unix(const char *url, const char *path, struct rb_addr *a, char *err,
                      size_t errlen)
{
	struct sockaddr_un *sun = (struct sockaddr_un *)&a->ss;
	size_t len = strlen(path);

	if (len == 0) {
		snprintf(err, errlen, "invalid listen URL '%s': empty socket path", url);
		return -EINVAL;
	}
	if (len >= sizeof(sun->sun_path)) {
		snprintf(err, errlen, "invalid listen URL '%s': socket path longer than %zu bytes",
		         url, sizeof(sun->sun_path) - 1);
		return -EINVAL;
	}
	sun->sun_family = AF_UNIX;
	memcpy(sun->sun_path, path, len + 1);
	a->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
	/* unix:@name is an abstract socket: leading NUL, no terminator. */
	if (path[0] == '@') {
		sun->sun_path[0] = '\0';
		a->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
	}
	a->is_unix = true;
	return 0;
}

int rb__parse_url(const char *url, struct rb_addr *a, char *err, size_t errlen)
{
	char host[128];
	const char *rest, *colon, *port_s;
	struct addrinfo hints = {0}, *res = NULL;
	unsigned port;
	int rc;

	memset(a, 0, sizeof(*a));
	a->inherited_fd = -1;
	snprintf(a->url, sizeof(a->url), "%s", url);
	if (strncmp(url, "fd:", 3) == 0) {
		unsigned fd;
		if (parse_port(url + 3, &fd) < 0 || fd > 65535) {
			snprintf(err, errlen,
			         "invalid listen URL '%s': expected fd:N, N a descriptor", url);
			return -EINVAL;
		}
		a->inherited_fd = (int)fd;
		return 0;
	}
	if (strncmp(url, "unix:", 5) == 0) {
		rest = url + 5;
		if (strncmp(rest, "//", 2) == 0)
			rest += 2;
		return parse_unix(url, rest, a, err, errlen);
	}
	if (strncmp(url, "tcp://", 6) != 0 && strncmp(url, "udp://", 6) != 0) {
		snprintf(err, errlen, "invalid listen URL '%s': %s", url, URL_HELP);
		return -EINVAL;
	}
	a->is_udp = url[0] == 'u';
	rest = url + 6;
	if (rest[0] == '[') {
		const char *close = strchr(rest, ']');
		if (!close || close[1] != ':') {
			snprintf(err, errlen, "invalid listen URL '%s': %s", url, URL_HELP);
			return -EINVAL;
		}
		if ((size_t)(close - rest - 1) >= sizeof(host))
			goto bad_host;
		memcpy(host, rest + 1, (size_t)(close - rest - 1));
		host[close - rest - 1] = '\0';
		port_s = close + 2;
	} else {
		colon = strrchr(rest, ':');
		if (!colon || strchr(rest, ':') != colon) {
			snprintf(err, errlen, "invalid listen URL '%s': %s", url, URL_HELP);
			return -EINVAL;
		}
		if ((size_t)(colon - rest) >= sizeof(host))
			goto bad_host;
		memcpy(host, rest, (size_t)(colon - rest));
		host[colon - rest] = '\0';
		port_s = colon + 1;
	}
	if (!host[0])
		goto bad_host;
	rc = parse_port(port_s, &port);
	if (rc < 0) {
		snprintf(err, errlen, "invalid port '%s' in listen URL '%s': expected 0 to 65535",
		         port_s, url);
		return -EINVAL;
	}
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = a->is_udp ? SOCK_DGRAM : SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	rc = getaddrinfo(host, port_s, &hints, &res);
	if (rc != 0 || !res)
		goto bad_host;
	memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
	a->len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
bad_host:
	snprintf(err, errlen, "invalid host in listen URL '%s': not an address or known name", url);
	return -EINVAL;
}

/*
 * A leftover socket file from a dead server is removed; a live one is not.
 * The probe connect is non-blocking: a live server with a full backlog
 * answers EAGAIN, which means alive, instead of blocking start-up for good.
 */
static int unix_clear_stale(const struct sockaddr_un *sun, socklen_t len)
{
	struct stat st;
	int fd, rc, err;

	if (sun->sun_path[0] == '\0' || stat(sun->sun_path, &st) < 0 || !S_ISSOCK(st.st_mode))
		return 0;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	rc = connect(fd, (const struct sockaddr *)sun, len);
	err = errno;
	close(fd);
	if (rc == 0 || err == EAGAIN || err == EINPROGRESS)
		return -EADDRINUSE;
	if (err == ECONNREFUSED)
		unlink(sun->sun_path);
	return 0;
}

void rb__unix_unlink_if_ours(const struct rb_addr *a)
{
	const struct sockaddr_un *sun = (const struct sockaddr_un *)&a->ss;
	struct stat st;

	/* Only the socket we bound: something put there since is not ours. */
	if (!a->is_unix || a->inherited_fd >= 0 || !sun->sun_path[0] || !a->file_ino)
		return;
	if (lstat(sun->sun_path, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == a->file_dev &&
	    st.st_ino == a->file_ino)
		unlink(sun->sun_path);
}

/* The URL of an address as bound: numeric host, real port. */
void rb__addr_format(struct rb_addr *a)
{
	char host[INET6_ADDRSTRLEN] = "";
	unsigned port = 0;

	if (a->ss.ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)&a->ss;
		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		port = ntohs(sin->sin_port);
		snprintf(a->url, sizeof(a->url), "%s://%s:%u", a->is_udp ? "udp" : "tcp", host,
		         port);
	} else if (a->ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&a->ss;
		inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
		port = ntohs(s6->sin6_port);
		snprintf(a->url, sizeof(a->url), "%s://[%s]:%u", a->is_udp ? "udp" : "tcp", host,
		         port);
	} else if (a->is_unix) {
		const struct sockaddr_un *sun = (const struct sockaddr_un *)&a->ss;
		if (sun->sun_path[0])
			snprintf(a->url, sizeof(a->url), "unix:%s", sun->sun_path);
		else
			snprintf(a->url, sizeof(a->url), "unix:@%.*s",
			         (int)(a->len - offsetof(struct sockaddr_un, sun_path) - 1),
			         sun->sun_path + 1);
	}
}

/*
 * fd:N (socket activation): use a socket someone else opened and bound. It
 * must be a listening stream socket or a datagram socket; what it is and
 * where it is bound fill in the address, so the rest cannot tell.
 */
static int adopt(struct rb_addr *a, char *err, size_t errlen)
{
	int fd = a->inherited_fd, type = 0, listening = 0, fl;
	socklen_t len = sizeof(type);

	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) {
		snprintf(err, errlen, "cannot use '%s': %s", a->url, strerror(errno));
		return -EBADF;
	}
	len = sizeof(listening);
	getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len);
	if (!((type == SOCK_STREAM && listening) || type == SOCK_DGRAM)) {
		snprintf(err, errlen,
		         "cannot use '%s': not a listening stream or a datagram socket", a->url);
		return -EINVAL;
	}
	a->len = sizeof(a->ss);
	if (getsockname(fd, (struct sockaddr *)&a->ss, &a->len) < 0) {
		snprintf(err, errlen, "cannot use '%s': %s", a->url, strerror(errno));
		return -errno;
	}
	fl = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	fcntl(fd, F_SETFD, FD_CLOEXEC);
	a->is_udp = type == SOCK_DGRAM;
	a->is_unix = a->ss.ss_family == AF_UNIX;
	rb__addr_format(a);
	return fd;
}

int rb__listen(struct rb_addr *a, const struct rb_listen_opts *o, char *err, size_t errlen)
{
	int family = a->ss.ss_family, one = 1, fd, rc;
	const struct sockaddr_un *sun = (const struct sockaddr_un *)&a->ss;

	if (a->inherited_fd >= 0)
		return adopt(a, err, errlen);

	if (a->is_unix) {
		rc = unix_clear_stale((const struct sockaddr_un *)&a->ss, a->len);
		if (rc < 0) {
			snprintf(err, errlen, "cannot listen on '%s': %s", a->url, strerror(-rc));
			return rc;
		}
	}
	fd = socket(family, (a->is_udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC,
	            0);
	if (fd < 0)
		goto fail;
	/* TCP: a restarted server may bind while old connections linger in
	 * TIME_WAIT. Never for UDP: there SO_REUSEADDR lets another user bind
	 * the same port and take our datagrams. SO_REUSEPORT (each worker its
	 * own UDP socket) is safe: the kernel lets only the same user join. */
	if (!a->is_unix && !a->is_udp &&
	    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		goto fail_close;
	if (o->reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
		goto fail_close;
	if (family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0)
		goto fail_close;
	if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0)
		goto fail_close;
	if (a->is_unix && sun->sun_path[0]) {
		struct stat st;
		/* The file's mode would follow the umask (0777 under umask 000);
		 * nobody can connect before listen(), so set it in between. */
		if (chmod(sun->sun_path, o->unix_mode) < 0 || stat(sun->sun_path, &st) < 0) {
			rc = -errno;
			unlink(sun->sun_path);
			errno = -rc;
			goto fail_close;
		}
		a->file_dev = st.st_dev;
		a->file_ino = st.st_ino;
	}
	if (!a->is_udp && listen(fd, o->backlog) < 0)
		goto fail_close;
	if (!a->is_unix) {
		a->len = sizeof(a->ss);
		if (getsockname(fd, (struct sockaddr *)&a->ss, &a->len) == 0)
			rb__addr_format(a);
	}
	if (a->is_udp) {
		/* Datagrams that arrive while a worker is busy wait here; a bigger
		 * queue means fewer drops in bursts (capped by net.core.rmem_max). */
		int sz = 4 << 20;
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	}
	return fd;
fail_close:
	rc = -errno;
	close(fd);
	errno = -rc;
fail:
	rc = -errno;
	snprintf(err, errlen, "cannot listen on '%s': %s", a->url, strerror(-rc));
	return rc;
}

void rb__listen_set_init(struct rb_listen_set *ls)
{
	memset(ls, 0, sizeof(*ls));
	for (size_t i = 0; i < RB_MAX_LISTEN; i++)
		ls->fds[i] = -1;
}

void rb__listen_set_close(struct rb_listen_set *ls)
{
	for (size_t i = 0; i < RB_MAX_LISTEN; i++) {
		if (ls->fds[i] < 0)
			continue;
		close(ls->fds[i]);
		ls->fds[i] = -1;
		rb__unix_unlink_if_ours(&ls->addrs[i]);
	}
}

void rb__listen_set_release(struct rb_listen_set *ls)
{
	if (__atomic_sub_fetch(&ls->holders, 1, __ATOMIC_ACQ_REL) == 0)
		rb__listen_set_close(ls);
}
