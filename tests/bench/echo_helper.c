// SPDX-License-Identifier: MIT
/*
 * echo-helper: a tiny single-threaded echo server for rebound-bench's
 * end-to-end tests, correct by default and broken on request:
 *   --drop-at N   drop byte N of every connection's stream
 *   --flip-at N   invert byte N of every connection's stream
 *   --stall-at N  stop echoing (but keep the connection) at byte N
 *   --close-at N  close the connection at byte N
 *   --max-conns N close every connection accepted after the first N at once
 *   --accept-max N  stop accepting after N connections (the rest wait in
 *                 the backlog)
 *   --fork-child  fork an idle child (a process tree, as a forking server has);
 *                 it exits when the parent does
 *   --leak-fds    at a client's EOF, send FIN but never close the descriptor
 *   --udp-swap    udp: echo datagrams in swapped pairs (2nd, then 1st)
 *   --udp-dup     udp: echo every datagram twice
 *   --listen URL  tcp://127.0.0.1:0 (default), tcp://[::1]:0, udp://127.0.0.1:0
 *                 or unix:PATH; over udp the offsets count all datagrams' bytes
 *   --service S   echo (default), discard (RFC 863: read and drop everything;
 *                 close after the client's EOF) or chargen (RFC 864: send the
 *                 pattern from line 0 as fast as the client reads, drop input);
 *                 over tcp and unix. --stall-at and --close-at count the bytes
 *                 read (discard) or written (chargen); --flip-at and --drop-at
 *                 damage the chargen stream at that offset
 * Prints "echo-helper: listening on URL" to stderr once it accepts and
 * exits 0 on SIGTERM or SIGINT.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BUF_SIZE (64 * 1024)
#define NONE     UINT64_MAX

struct conn {
	struct conn *prev, *next; /* all open connections, freed at exit */
	int fd;
	uint64_t in_off; /* stream bytes read so far */
	size_t head, tail;
	bool eof, stalled;
	uint8_t buf[BUF_SIZE];
	uint8_t in[BUF_SIZE];
};

static uint64_t drop_at = NONE, flip_at = NONE, stall_at = NONE, close_at = NONE;
static bool udp_swap, udp_dup, leak_fds;
static uint64_t max_conns = NONE, accept_max = NONE, accepted;
static enum { ECHO, DISCARD, CHARGEN } service = ECHO;
static int epfd;
static struct conn *conns;

/* Level-triggered interest: read while there is room, write while there is data. */
static void update(struct conn *c)
{
	struct epoll_event ev = {.data.ptr = c};

	if (!c->eof && !c->stalled && c->tail < BUF_SIZE)
		ev.events |= EPOLLIN;
	if (c->head < c->tail)
		ev.events |= EPOLLOUT;
	epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_close(struct conn *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	close(c->fd);
	free(c);
}

/*
 * Byte @off of the RFC 864 stream, written here from the RFC independently
 * of rebound-bench's chargen.c: the 95 printable characters ' ' to '~' as a
 * ring, line N holding ring positions N to N + 71 (mod 95), then CR LF.
 */
static uint8_t chargen_byte(uint64_t off)
{
	uint64_t line = off / 74, col = off % 74;

	if (col >= 72)
		return col == 72 ? '\r' : '\n';
	return (uint8_t)(' ' + (line + col) % 95);
}

/*
 * discard: reads and drops; after the client's EOF, FIN and close. One read
 * per wake-up (the interest is level-triggered): a fast client must not
 * starve the other connections.
 */
static bool discard_io(struct conn *c)
{
	for (int budget = 1;; budget--) {
		size_t want = BUF_SIZE;
		ssize_t r;

		if (stall_at != NONE && c->in_off >= stall_at) {
			/* Stop reading (and so acknowledging, once the window is full). */
			struct epoll_event ev = {.data.ptr = c};

			epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
			return true;
		}
		if (stall_at != NONE && stall_at - c->in_off < want)
			want = (size_t)(stall_at - c->in_off);
		if (close_at != NONE && close_at - c->in_off < want)
			want = (size_t)(close_at - c->in_off);
		if (close_at != NONE && c->in_off >= close_at)
			break;
		if (!budget)
			return true;
		r = read(c->fd, c->in, want);
		if (r > 0) {
			c->in_off += (uint64_t)r;
			continue;
		}
		if (r < 0 && errno == EAGAIN)
			return true;
		if (r == 0)
			shutdown(c->fd, SHUT_WR);
		break;
	}
	conn_close(c);
	return false;
}

/*
 * chargen: writes the stream (damaged as asked) while the socket takes it,
 * one buffer per wake-up so that every connection gets its turn; drops input.
 */
static bool chargen_io(struct conn *c, uint32_t events)
{
	int budget = 1; /* fresh buffers this wake-up, after what was pending */

	if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
		ssize_t r = read(c->fd, c->in, BUF_SIZE);

		if (r == 0 || (r < 0 && errno != EAGAIN)) {
			conn_close(c);
			return false;
		}
	}
	for (;;) {
		ssize_t w;

		/* buf[head, tail) is pending; in_off is the stream offset after it. */
		if (c->head == c->tail) {
			uint64_t end = c->in_off + BUF_SIZE;

			if (stall_at != NONE && c->in_off >= stall_at) {
				struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};

				epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
				return true;
			}
			if (close_at != NONE && c->in_off >= close_at) {
				shutdown(c->fd, SHUT_WR);
				conn_close(c);
				return false;
			}
			if (!budget--)
				return true;
			if (stall_at != NONE && end > stall_at)
				end = stall_at;
			if (close_at != NONE && end > close_at)
				end = close_at;
			c->head = c->tail = 0;
			for (uint64_t off = c->in_off; off < end; off++) {
				uint8_t b = chargen_byte(off);

				if (off != drop_at)
					c->buf[c->tail++] = off == flip_at ? (uint8_t)~b : b;
			}
			c->in_off = end;
			if (c->head == c->tail)
				continue;
		}
		w = write(c->fd, c->buf + c->head, c->tail - c->head);
		if (w < 0 && errno == EAGAIN)
			return true;
		if (w <= 0) {
			conn_close(c);
			return false;
		}
		c->head += (size_t)w;
	}
}

/* Returns false when the connection is gone. */
static bool conn_io(struct conn *c, uint32_t events)
{
	if (service == DISCARD)
		return discard_io(c);
	if (service == CHARGEN)
		return chargen_io(c, events);
	if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !c->eof && !c->stalled &&
	    c->tail < BUF_SIZE) {
		ssize_t r = read(c->fd, c->in, BUF_SIZE - c->tail);

		if (r == 0)
			c->eof = true;
		else if (r < 0 && errno != EAGAIN) {
			conn_close(c);
			return false;
		}
		for (ssize_t i = 0; i < r; i++) {
			uint64_t off = c->in_off++;

			if (off == close_at) {
				conn_close(c);
				return false;
			}
			if (off == stall_at) {
				c->stalled = true;
				break;
			}
			if (off == drop_at)
				continue;
			c->buf[c->tail++] = off == flip_at ? (uint8_t)~c->in[i] : c->in[i];
		}
	}
	if (c->head < c->tail) {
		ssize_t w = write(c->fd, c->buf + c->head, c->tail - c->head);

		if (w < 0 && errno != EAGAIN) {
			conn_close(c);
			return false;
		}
		if (w > 0)
			c->head += (size_t)w;
		if (c->head == c->tail)
			c->head = c->tail = 0;
	}
	if (c->eof && c->head == c->tail) {
		shutdown(c->fd, SHUT_WR);
		if (leak_fds) {
			epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
			c->fd = dup(c->fd); /* the original stays open for good */
			return false;
		}
		conn_close(c);
		return false;
	}
	update(c);
	return true;
}

/* Echoes every waiting datagram, damaged as asked. */
static void udp_echo(int fd)
{
	static uint64_t off;
	static uint8_t in[65536], out[65536];
	struct sockaddr_storage peer;

	for (;;) {
		socklen_t pl = sizeof(peer);
		ssize_t r = recvfrom(fd, in, sizeof(in), 0, (struct sockaddr *)&peer, &pl);
		size_t n = 0;

		if (r < 0)
			return;
		/* A stalled udp echo answers nothing, not a truncated datagram. */
		if (off + (uint64_t)r > stall_at)
			return;
		for (ssize_t i = 0; i < r; i++, off++) {
			if (off == drop_at)
				continue;
			out[n++] = off == flip_at ? (uint8_t)~in[i] : in[i];
		}
		if (udp_swap) {
			/* Hold every other datagram and send it after the next one. */
			static uint8_t held[65536];
			static size_t held_len;
			static bool holding;

			if (!holding) {
				memcpy(held, out, n);
				held_len = n;
				holding = true;
				continue;
			}
			sendto(fd, out, n, 0, (struct sockaddr *)&peer, pl);
			sendto(fd, held, held_len, 0, (struct sockaddr *)&peer, pl);
			holding = false;
			continue;
		}
		if (n || !r)
			sendto(fd, out, n, 0, (struct sockaddr *)&peer, pl);
		if (udp_dup)
			sendto(fd, out, n, 0, (struct sockaddr *)&peer, pl);
	}
}

static int listen_on(const char *url, char *shown, size_t len)
{
	struct sockaddr_storage ss = {0};
	socklen_t sl;
	int fd, one = 1, type = SOCK_STREAM;

	if (!strncmp(url, "unix:", 5)) {
		struct sockaddr_un *sun = (struct sockaddr_un *)&ss;

		sun->sun_family = AF_UNIX;
		snprintf(sun->sun_path, sizeof(sun->sun_path), "%s", url + 5);
		unlink(sun->sun_path);
		sl = sizeof(*sun);
		snprintf(shown, len, "%s", url);
	} else if (!strcmp(url, "tcp://[::1]:0")) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

		s6->sin6_family = AF_INET6;
		s6->sin6_addr = in6addr_loopback;
		sl = sizeof(*s6);
	} else if (!strcmp(url, "tcp://127.0.0.1:0") || !strcmp(url, "udp://127.0.0.1:0")) {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

		s4->sin_family = AF_INET;
		s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		sl = sizeof(*s4);
	} else {
		return -EINVAL;
	}
	if (!strncmp(url, "udp:", 4))
		type = SOCK_DGRAM;
	fd = socket(ss.ss_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, sl) < 0 ||
	    (type == SOCK_STREAM && listen(fd, 1024) < 0))
		return -errno;
	if (ss.ss_family != AF_UNIX) {
		sl = sizeof(ss);
		getsockname(fd, (struct sockaddr *)&ss, &sl);
		if (ss.ss_family == AF_INET6)
			snprintf(shown, len, "tcp://[::1]:%u",
			         ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
		else
			snprintf(shown, len, "%s://127.0.0.1:%u",
			         type == SOCK_DGRAM ? "udp" : "tcp",
			         ntohs(((struct sockaddr_in *)&ss)->sin_port));
	}
	return fd;
}

static uint64_t number(const char *s)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 10);

	if (*end || end == s) {
		fprintf(stderr, "echo-helper: bad number '%s'\n", s);
		exit(2);
	}
	return v;
}

int main(int argc, char **argv)
{
	const char *url = "tcp://127.0.0.1:0";
	struct epoll_event ev = {.events = EPOLLIN}, evs[64];
	char shown[160];
	int lfd, sfd;
	sigset_t sigs;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--udp-swap")) {
			udp_swap = true;
			continue;
		}
		if (!strcmp(argv[i], "--fork-child")) {
			int p[2];
			char b;

			if (pipe(p) < 0)
				return 1;
			if (fork() == 0) {
				/* EOF when the parent (the write end's only holder) exits. */
				close(p[1]);
				while (read(p[0], &b, 1) > 0)
					;
				_exit(0);
			}
			close(p[0]);
			continue;
		}
		if (!strcmp(argv[i], "--leak-fds")) {
			leak_fds = true;
			continue;
		}
		if (!strcmp(argv[i], "--udp-dup")) {
			udp_dup = true;
			continue;
		}
		if (i + 1 >= argc) {
			fprintf(stderr, "echo-helper: '%s' needs a value\n", argv[i]);
			return 2;
		}
		if (!strcmp(argv[i], "--drop-at"))
			drop_at = number(argv[++i]);
		else if (!strcmp(argv[i], "--flip-at"))
			flip_at = number(argv[++i]);
		else if (!strcmp(argv[i], "--stall-at"))
			stall_at = number(argv[++i]);
		else if (!strcmp(argv[i], "--close-at"))
			close_at = number(argv[++i]);
		else if (!strcmp(argv[i], "--max-conns"))
			max_conns = number(argv[++i]);
		else if (!strcmp(argv[i], "--accept-max"))
			accept_max = number(argv[++i]);
		else if (!strcmp(argv[i], "--listen"))
			url = argv[++i];
		else if (!strcmp(argv[i], "--service")) {
			i++;
			if (!strcmp(argv[i], "discard"))
				service = DISCARD;
			else if (!strcmp(argv[i], "chargen"))
				service = CHARGEN;
			else if (strcmp(argv[i], "echo")) {
				fprintf(stderr, "echo-helper: unknown service '%s'\n", argv[i]);
				return 2;
			}
		} else {
			fprintf(stderr, "echo-helper: unknown option '%s'\n", argv[i]);
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
	lfd = listen_on(url, shown, sizeof(shown));
	epfd = epoll_create1(EPOLL_CLOEXEC);
	if (lfd < 0 || sfd < 0 || epfd < 0) {
		fprintf(stderr, "echo-helper: cannot listen on %s: %s\n", url,
		        strerror(lfd < 0 ? -lfd : errno));
		return 1;
	}
	/* NULL marks the listener, &sfd the signalfd. */
	ev.data.ptr = NULL;
	epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
	ev.data.ptr = &sfd;
	epoll_ctl(epfd, EPOLL_CTL_ADD, sfd, &ev);
	fprintf(stderr, "echo-helper: listening on %s\n", shown);

	for (;;) {
		int n = epoll_wait(epfd, evs, 64, -1);

		for (int i = 0; i < n; i++) {
			if (evs[i].data.ptr == &sfd) {
				if (!strncmp(url, "unix:", 5))
					unlink(url + 5);
				while (conns)
					conn_close(conns);
				return 0;
			}
			if (!evs[i].data.ptr && !strncmp(url, "udp:", 4)) {
				udp_echo(lfd);
				continue;
			}
			if (!evs[i].data.ptr) {
				int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
				struct conn *c;

				if (fd < 0)
					continue;
				if (++accepted >= accept_max)
					epoll_ctl(epfd, EPOLL_CTL_DEL, lfd, NULL);
				if (accepted > max_conns) {
					close(fd);
					continue;
				}
				c = calloc(1, sizeof(*c));
				if (!c) {
					close(fd);
					continue;
				}
				c->fd = fd;
				c->next = conns;
				if (conns)
					conns->prev = c;
				conns = c;
				ev.events = service == CHARGEN ? EPOLLIN | EPOLLOUT : EPOLLIN;
				ev.data.ptr = c;
				epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
				continue;
			}
			conn_io(evs[i].data.ptr, evs[i].events);
		}
	}
}
