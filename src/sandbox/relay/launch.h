/* compilerd-relay --launch (launch.c), dispatched from the relay's main. */
int launch_main(int argc, char **argv);
