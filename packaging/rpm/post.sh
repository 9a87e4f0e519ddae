# compilerd %post ($1: 1 on a first install, 2 or more on an upgrade).
# The compilerd system user, and its membership of the docker group.
systemd-sysusers /usr/lib/sysusers.d/compilerd.conf || :
if [ "$1" -eq 1 ]; then
    # First install: enable the socket and listen now; the first connection starts the service.
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || :
        systemctl enable --now compilerd.socket || :
    else
        systemctl --no-reload enable compilerd.socket || :
    fi
elif [ -d /run/systemd/system ]; then
    # Upgrade: restart a running daemon on the new binary (after its drain); a stopped one stays
    # stopped until the next connection.
    systemctl daemon-reload || :
    systemctl try-restart compilerd.service || :
fi
