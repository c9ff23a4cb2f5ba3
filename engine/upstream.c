/* SPDX-License-Identifier: MIT */
/*
 * The relay's upstream (--forward URL): resolved once at start, every
 * address kept in order; each connection tries them in turn with a
 * non-blocking connect, starting from the one that last worked.
 */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal.h"

#define FORWARD_HELP "expected tcp://HOST:PORT, tcp://[IPV6]:PORT or unix:PATH"

static int bad(char *err, size_t errlen, const char *url, const char *why)
{
	snprintf(err, errlen, "invalid --forward URL '%s': %s", url, why);
	return -EINVAL;
}

int rb__upstream_parse(const char *url, struct rb_upstream *up, char *err, size_t errlen)
{
	struct addrinfo hints = {0}, *res = NULL, *ai;
	char host[256], port_s[8];
	const char *rest, *end, *p;
	unsigned long port;
	int rc;

	memset(up, 0, sizeof(*up));
	snprintf(up->url, sizeof(up->url), "%s", url);
	if (strncmp(url, "unix:", 5) == 0) {
		struct sockaddr_un *sun = (struct sockaddr_un *)&up->addr[0];
		size_t len;
		rest = url + 5;
		if (strncmp(rest, "//", 2) == 0)
			rest += 2;
		len = strlen(rest);
		if (len == 0)
			return bad(err, errlen, url, "empty socket path");
		if (len >= sizeof(sun->sun_path)) {
			snprintf(err, errlen,
			         "invalid --forward URL '%s': socket path longer than %zu bytes",
			         url, sizeof(sun->sun_path) - 1);
			return -EINVAL;
		}
		sun->sun_family = AF_UNIX;
		memcpy(sun->sun_path, rest, len + 1);
		up->len[0] = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
		if (rest[0] == '@') { /* abstract: leading NUL, no terminator */
			sun->sun_path[0] = '\0';
			up->len[0]--;
		}
		up->n = 1;
		up->is_unix = true;
		return 0;
	}
	if (strncmp(url, "tcp://", 6) != 0)
		return bad(err, errlen, url, FORWARD_HELP);
	rest = url + 6;
	if (rest[0] == '[') {
		end = strchr(rest, ']');
		if (!end || end[1] != ':')
			return bad(err, errlen, url, FORWARD_HELP);
		rest++;
		p = end + 2;
	} else {
		end = strrchr(rest, ':');
		if (!end || strchr(rest, ':') != end)
			return bad(err, errlen, url, FORWARD_HELP);
		p = end + 1;
	}
	if (end == rest || (size_t)(end - rest) >= sizeof(host))
		goto bad_host;
	memcpy(host, rest, (size_t)(end - rest));
	host[end - rest] = '\0';
	if (!*p || strlen(p) > 5 || strspn(p, "0123456789") != strlen(p) ||
	    (port = strtoul(p, NULL, 10)) < 1 || port > 65535) {
		snprintf(err, errlen,
		         "invalid port '%s' in --forward URL '%s': expected 1 to 65535", p, url);
		return -EINVAL;
	}
	snprintf(port_s, sizeof(port_s), "%lu", port);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	rc = getaddrinfo(host, port_s, &hints, &res);
	if (rc != 0 || !res)
		goto bad_host;
	for (ai = res; ai && up->n < RB_UPSTREAM_ADDRS; ai = ai->ai_next) {
		if (ai->ai_addrlen > sizeof(up->addr[0]))
			continue;
		memcpy(&up->addr[up->n], ai->ai_addr, ai->ai_addrlen);
		up->len[up->n] = ai->ai_addrlen;
		up->n++;
	}
	freeaddrinfo(res);
	if (up->n == 0)
		goto bad_host;
	return 0;
bad_host:
	snprintf(err, errlen, "invalid host in --forward URL '%s': not an address or known name",
	         url);
	return -EINVAL;
}

int rb__upstream_connect(const struct rb_upstream *up, unsigned i, int *fd_out)
{
	int fd = socket(up->addr[i].ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int rc;

	*fd_out = -1;
	if (fd < 0)
		return -errno;
	do
		rc = connect(fd, (const struct sockaddr *)&up->addr[i], up->len[i]);
	while (rc < 0 && errno == EINTR);
	*fd_out = fd;
	if (rc == 0)
		return 0;
	/* A UNIX socket whose listener's backlog is full says EAGAIN. */
	if (errno == EINPROGRESS || errno == EAGAIN)
		return -EINPROGRESS;
	rc = -errno;
	close(fd);
	*fd_out = -1;
	return rc;
}
