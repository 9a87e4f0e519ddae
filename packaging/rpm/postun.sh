# compilerd %postun ($1: 0 when the package is erased, 1 or more on an upgrade).
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || :
    fi
    # rpm removed /etc/compilerd/config.toml unless it was edited (then it is kept as
    # config.toml.rpmsave, as rpm does for every package); the directory goes if it is empty.
    # The compilerd user stays, as with every package that creates one.
    rmdir /etc/compilerd 2>/dev/null || :
fi
