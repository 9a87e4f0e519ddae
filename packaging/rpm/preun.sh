# compilerd %preun ($1: 0 when the package is erased, 1 or more on an upgrade).
if [ "$1" -eq 0 ]; then
    # Erase: stop the daemon (it drains first) and the socket, and disable the socket.
    if [ -d /run/systemd/system ]; then
        systemctl --no-reload disable --now compilerd.socket compilerd.service || :
    else
        systemctl --no-reload disable compilerd.socket || :
    fi
fi
