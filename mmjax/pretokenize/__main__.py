from mmjax.pretokenize.run import main

main()
