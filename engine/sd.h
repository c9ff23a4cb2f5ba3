/* SPDX-License-Identifier: MIT */
/* systemd readiness notification and socket activation (CLI only). */
#ifndef REBOUND_SD_H
#define REBOUND_SD_H

#define RB_SD_LISTEN_FDS_START 3

/* Open the $NOTIFY_SOCKET channel: 1 if set up, 0 if not under systemd, -errno. */
int rb_sd_notify_init(void);
/* Send a state string ("READY=1"); 0 or -errno. Async-signal-safe. */
int rb_sd_notify(const char *state);
void rb_sd_notify_fini(void);

/* Sockets passed by socket activation: their count (at fd 3 on), 0, or -errno. */
int rb_sd_listen_fds(void);

#endif
