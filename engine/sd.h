/* SPDX-License-Identifier: MIT */
/* systemd readiness notification, watchdog and socket activation (CLI only). */
#ifndef REBOUND_SD_H
#define REBOUND_SD_H

#include <stdbool.h>

#define RB_SD_LISTEN_FDS_START 3

/* Open the $NOTIFY_SOCKET channel: 1 if set up, 0 if not under systemd, -errno. */
int rb_sd_notify_init(void);
/* Send a state string ("READY=1"); 0 or -errno. Async-signal-safe. */
int rb_sd_notify(const char *state);
void rb_sd_notify_fini(void);

struct rb_server;
struct rb_config;
/* If the service manager asked for a watchdog ($WATCHDOG_USEC, for us by
 * $WATCHDOG_PID) and notification is set up, start a thread that sends
 * WATCHDOG=1 while rb_server_heartbeat says every worker is alive (logging
 * with cfg). 1 if started, 0 if not asked, -errno. */
int rb_sd_watchdog_start(struct rb_server *srv, const struct rb_config *cfg);
/* Stop that thread (before the server is destroyed); no-op if not started. */
void rb_sd_watchdog_stop(void);

/* Sockets passed by socket activation: their count (at fd 3 on), 0, or -errno. */
int rb_sd_listen_fds(void);

#endif
