// Java's java.net.http.HttpClient: one request, and what the application gets back.
//
//   java HttpClientGet GET URL | java HttpClientGet POST URL BYTES
//
// Prints "HTTP <status>" for a response, or the exception (toString()) and each cause
// ("caused by: ..."), as a log line shows them; exits 1 then.
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class HttpClientGet {
    public static void main(String[] args) throws Exception {
        HttpRequest.BodyPublisher body = args[0].equals("POST")
                ? HttpRequest.BodyPublishers.ofByteArray(new byte[Integer.parseInt(args[2])])
                : HttpRequest.BodyPublishers.noBody();
        HttpRequest request = HttpRequest.newBuilder(URI.create(args[1])).method(args[0], body).build();
        HttpClient client = HttpClient.newHttpClient();
        try {
            HttpResponse<Void> response = client.send(request, HttpResponse.BodyHandlers.discarding());
            System.out.println("HTTP " + response.statusCode());
        } catch (Exception e) {
            System.out.println(e);
            for (Throwable cause = e.getCause(); cause != null; cause = cause.getCause()) {
                System.out.println("caused by: " + cause);
            }
            System.exit(1);
        }
    }
}
