module compilerd.local/modproxy

go 1.19
