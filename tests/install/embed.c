/* SPDX-License-Identifier: MIT */
/* An echo server embedded through pkg-config: what tests/install/check-install
 * compiles against the installed header and library, then runs. */
#include <netinet/in.h>
#include <pthread.h>
#include <rebound/rebound.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void *run(void *srv)
{
	return (void *)(long)rb_server_run(srv);
}

int main(void)
{
	struct rb_config cfg;
	struct rb_server *srv;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	char err[256], buf[16] = "";
	size_t got = 0;
	ssize_t n;
	pthread_t t;
	void *rc;
	int fd;

	rb_config_init(&cfg);
	cfg.listen[cfg.n_listen++] = "tcp://127.0.0.1:0";
	if (rb_server_create(&cfg, &srv, err, sizeof(err)) < 0)
		return fprintf(stderr, "embed: %s\n", err), 1;
	pthread_create(&t, NULL, run, srv);
	sa.sin_port = htons((unsigned short)rb_server_port(srv, 0));
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || write(fd, "hello", 5) != 5 ||
	    shutdown(fd, SHUT_WR) < 0)
		return perror("embed"), 1;
	while ((n = read(fd, buf + got, sizeof(buf) - 1 - got)) > 0) /* to the echo's EOF */
		got += (size_t)n;
	close(fd);
	rb_server_stop(srv);
	pthread_join(t, &rc);
	rb_server_destroy(srv);
	printf("embed: rebound %s echoed '%s', run returned %ld\n", RB_VERSION, buf, (long)rc);
	return 0;
}
