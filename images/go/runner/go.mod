module compilerd.local/gorun

go 1.19
